"""velollmd.cuda"""
