"""Everything on one machine: a local cluster of real processes, and the demo.

May import every other room.
"""
