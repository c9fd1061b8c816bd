"""Datasets (VOC layout, synthetic benchmark), proposals and image decoding."""
