"""`gemma4u run-batch`: OpenAI batch lines in, vLLM-shaped answers out, over the job's feeding loop."""
