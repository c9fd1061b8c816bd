"""From matched peaks to instances (docs/design.md §1 step 8): each instance's confidence, and
mask NMS on the kernels.

Confidence (PRM returns none; ``InstanceSettings.confidence``):

- ``peak_quality`` (default): the peak's class-map value times the soft IoU of the
  matching map with the chosen proposal — strong evidence that the proposal explains;
- ``peak``: the peak's class-map value;
- ``match``: the matching score (PRM's own ordering for NMS; not comparable across
  images or object sizes);
- ``peak_match``: the peak's class-map value times the matching score; with objectness
  re-ranking (``MatchingSettings.rerank``) that score is the proposal's objectness, so
  strong class evidence on an object-like proposal ranks first (our addition).

NMS: instances in order of confidence (ties: peak order), greedy, class-agnostic, mask
IoU ≥ ``nms_iou`` suppresses (PRM: 0.3); the caller adds a suppressed instance's PRM into
the one that suppressed it, as PRM does.

Student agreement (``InstanceSettings.student_agreement``, λ; our addition): where the model
directory has a student (``icn-rt train student``), each instance's confidence is then
multiplied by 1 + λ × its agreement, the highest of IoU × score over the student's instances
of its class on the same image (:func:`~icn_rt.runtime.predictor.agreement`), and the
instances are ranked again. The student learnt from the pipeline's labels on many images;
where both find the same mask, the mask is more often right. λ 16 (the default) was chosen
on the dev splits of five trainings in three regimes (docs/accuracy.md); 0: off.

Who leads (``InstanceSettings.lead``; our addition): ``student`` (the default) gives the
student's instances, each confidence × (1 + μ × its highest IoU with the pipeline's
instances of its class: ``teacher_agreement``, μ, default 1; 0: the student alone), ranked
again: the pipeline's peaks and matching vote for the student's masks, and the student's
masks snap to the image's proposals (``lead_refine``: ``proposals``; ``own``: the
student's own ``refine``). ``teacher`` gives the pipeline's instances, ranked by the
student's agreement as above. Chosen on the dev splits of five trainings in three regimes,
where the student leading ranked above the teacher leading in every one (docs/accuracy.md,
"Who leads"). Without a student in the model directory the pipeline leads whatever the
setting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from icn_rt.kernels import Kernels

CONFIDENCES = ("peak_quality", "peak", "match", "peak_match")
LEADS = ("student", "teacher")
LEAD_REFINES = ("proposals", "own")


@dataclass
class InstanceSettings:
    nms_iou: float = 0.3
    confidence: str = "peak_quality"
    student_agreement: float = 16.0
    lead: str = "student"
    teacher_agreement: float = 1.0
    lead_refine: str = "proposals"

    def __post_init__(self) -> None:
        if self.confidence not in CONFIDENCES:
            raise ValueError(f"unknown confidence {self.confidence!r}; choose one of {', '.join(CONFIDENCES)}")
        if not 0 <= self.student_agreement <= 1000:
            raise ValueError(f"student_agreement must be in [0, 1000] (0: off), got {self.student_agreement}")
        if self.lead not in LEADS:
            raise ValueError(f"unknown lead {self.lead!r}; choose one of {', '.join(LEADS)}")
        if not 0 <= self.teacher_agreement <= 1000:
            raise ValueError(f"teacher_agreement must be in [0, 1000] (0: off), got {self.teacher_agreement}")
        if self.lead_refine not in LEAD_REFINES:
            raise ValueError(f"unknown lead_refine {self.lead_refine!r}; choose one of {', '.join(LEAD_REFINES)}")

    @property
    def needs_student(self) -> bool:
        """Whether the model's student runs beside the pipeline (its agreement, or its lead)."""
        return self.student_agreement > 0 or self.lead == "student"


def confidence(settings: InstanceSettings, value: np.ndarray, match: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """Each peak's confidence from its class-map ``value``, its ``match`` score and the
    ``quality`` of its match (:func:`~icn_rt.matching.scores.match`), all ``float64 [K]``."""
    return {"peak_quality": value * quality, "peak": value, "match": match,
            "peak_match": value * match}[settings.confidence]


def suppress(masks: np.ndarray, confidence: np.ndarray, threshold: float,
             kernels: Kernels) -> tuple[np.ndarray, np.ndarray]:
    """Greedy mask NMS of ``masks: bool [N, H, W]`` by descending ``confidence`` (ties:
    input order) on ``kernels`` -> ``(keep, owner)`` on the host (see
    :meth:`~icn_rt.kernels.interface.Kernels.nms`)."""
    order = np.argsort(-confidence, kind="stable")
    keep, owner = kernels.nms(kernels.pack(kernels.to(masks)), kernels.to(order), threshold)
    return kernels.host(keep), kernels.host(owner)

