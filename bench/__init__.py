"""Benchmarks: stager side by side with the transfer tools people use today."""
