"""Tools around DVC experiments: named recipes of overrides (recipe), the summary of a cross-validation study
(summarize), and a cross-validation trained on an offline GPU machine and scored here (offline_cv)."""
