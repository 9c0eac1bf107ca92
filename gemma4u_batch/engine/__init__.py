"""Engine stage: requests in, generations out. The protocol every engine keeps, the vLLM engine
driven request by request, what a request becomes for vLLM, gemma4u's vLLM plugin, and the fake
engine for unit tests.
"""
