"""Before a run: `--dry-run` plans, `--estimate` projections, recipes and `gemma4u inspect`."""
