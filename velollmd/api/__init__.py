"""velollmd.api"""
