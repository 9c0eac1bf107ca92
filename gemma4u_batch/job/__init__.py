"""A job: one run (or one --shard) of a JobConfig into OUT: the Job, its feeding loop, stop signals
and the quick check that skips finished items before they are read.
"""
