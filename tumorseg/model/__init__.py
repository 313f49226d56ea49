"""The network and what it is trained with: the reference U-Net, pretrained encoders, the losses and metrics,
build (the model, loss and compile of params), load (a trained model file), outputs and probabilities."""
