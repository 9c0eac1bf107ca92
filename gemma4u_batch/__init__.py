"""gemma4u: offline batch captioning and transcription on vLLM with Gemma 4 Unified."""

__version__ = "0.1.0"
