"""Training: the classifier, the ICN's labels (pseudo labels or ground truth) and the ICN."""
