"""velollmd.http"""
