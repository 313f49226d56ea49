"""Scoring on validation and test: the report (threshold and post-processing chosen on validation), metrics,
post-processing, the tumour-type scores, evaluate's choices as read by later steps, figures and the review page."""
