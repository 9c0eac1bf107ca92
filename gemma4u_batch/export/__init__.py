"""`gemma4u export`: the current records as a flat file or a Hugging Face dataset folder (with its
card), and its upload to the Hub.
"""
