"""From a source to model-ready arrays and a patient-level split: download, the .mat reader, synthetic phantoms,
conversion and preprocessing, the official folds (cvind.mat), the split, and the loaders every stage uses."""
