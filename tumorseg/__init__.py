"""Brain-tumor segmentation on the figshare T1-contrast MRI dataset."""

LABEL_NAMES = {1: "meningioma", 2: "glioma", 3: "pituitary"}
