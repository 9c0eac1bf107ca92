"""Does a vLLM setup compute what the reference model computes: the parity check, and the tiny
random checkpoint tests build.
"""
