"""The network and what it is trained with: the reference U-Net, pretrained encoders, the losses and metrics,
build (the model, loss and compile settings of params) and inference (loading a model, batched prediction)."""
