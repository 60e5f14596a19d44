"""velollmd.cache"""
