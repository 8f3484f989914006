"""End-to-end recipes that chain several CLI runs (used by `make demo`, benchmarks and the notebook)."""
