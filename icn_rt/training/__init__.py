"""Training: the classifier (and, as they land, pseudo labels and the ICN)."""
