"""velollmd.backends"""
