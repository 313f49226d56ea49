"""Using a trained model on new scans: the Python API (segmenter), the predict command and its files
(segment_files), reading scans (PNG, DICOM, NIfTI, .mat), writing masks and tables, and the exports."""
