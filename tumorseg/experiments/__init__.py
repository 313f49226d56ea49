"""Tools around DVC experiments: named recipes of overrides (python -m tumorseg.experiments.recipe) and the
summary of a cross-validation study (python -m tumorseg.experiments.summarize)."""
