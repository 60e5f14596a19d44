"""velollmd.toolcalls"""
