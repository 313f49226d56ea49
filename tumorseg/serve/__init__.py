"""Using a trained model on new scans: the Python API (segmenter), the predict command, reading scans (PNG,
DICOM, NIfTI, .mat), writing masks and tables, and the SavedModel/TFLite exports."""
