"""Proposal matching, the Python face of the kernels (docs/design.md §1 steps 7-8): each peak's
map scored against every proposal (Eq. 5 and PRM's vanilla score), the best one taken,
confidences, and mask NMS. Runtime and training both import it; it imports the kernels,
the proposals and nothing above them."""

from icn_rt.matching.instances import CONFIDENCES, InstanceSettings, confidence, suppress
from icn_rt.matching.scores import (PLACES, SCORES, MatchingSettings, Prepared, Scored, background_map, iou, match,
                                    matching_map, rebalanced, resize_proposals, score_proposals, vanilla)

__all__ = ["CONFIDENCES", "PLACES", "SCORES", "InstanceSettings", "MatchingSettings", "Prepared", "Scored",
           "background_map", "confidence", "iou", "match", "matching_map", "rebalanced", "resize_proposals",
           "score_proposals", "suppress", "vanilla"]
