"""The train stage: the fit loop and its phases, resumable runs, the input pipelines (tf.data and numpy),
callbacks, the training history, and where it runs (devices, several GPUs or machines)."""
