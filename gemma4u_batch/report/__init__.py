"""`gemma4u report`: one self-contained HTML page to review a labeling run."""
