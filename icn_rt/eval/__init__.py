"""Evaluation: instance mAP^r (VOC protocol), ABO, semantic mIoU, proposal recall."""
