"""velollmd.engine"""
