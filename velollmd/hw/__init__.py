"""velollmd.hw"""
