"""velollmd.sched"""
