"""Networks: the classifier with peak stimulation, the ICN, and the explicit backward modules."""
