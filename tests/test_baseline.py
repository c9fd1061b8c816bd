"""The baseline (icn_rt.baseline) and icn-rt's predictor give the same instances
when icn-rt is set to the PRM reference's rules."""

import numpy as np
import pytest
import torch

from icn_rt.baseline import BaselineSettings, run_baseline
from icn_rt.data.preprocess import preprocess_array
from icn_rt.data.selective_search import SelectiveSearchConfig, selective_search
from icn_rt.data.voc import VOCDataset
from icn_rt.matching import InstanceSettings, MatchingSettings
from icn_rt.models.classifier import ClassifierSettings, PeakClassifier
from icn_rt.models.peaks import PeakSettings, find_peaks
from icn_rt.models.prm import PRMSettings
from icn_rt.models.store import Model
from icn_rt.runtime.predictor import Predictor


def _classifier(seed: int, backbone: str, size: int, sub_pixel: int) -> PeakClassifier:
    """A random 3-class classifier with non-trivial BN statistics, in eval mode."""
    torch.manual_seed(seed)
    m = PeakClassifier(3, ClassifierSettings(backbone=backbone, input_size=size, sub_pixel=sub_pixel))
    for bn in m.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


@pytest.fixture(scope="module")
def model():
    return _classifier(3, "small", 80, 4)


def test_baseline_gives_the_predictors_instances(model, tiny_voc):
    threshold = 0.0
    baseline = BaselineSettings(input_size=80, class_threshold=-1e9, peak_threshold=threshold)
    rules = Model(model, ("a", "b", "c"),
                  PeakSettings(rule="median", class_threshold=-1e9, peak_threshold=threshold, max_peaks=0),
                  PRMSettings("excitation"), MatchingSettings(score="vanilla", at="input", max_proposals=100),
                  InstanceSettings(confidence="match"))
    predictor = Predictor(rules)
    val = VOCDataset(tiny_voc, "val")
    compared = 0
    for image_id in val.ids[:3]:
        image = val.get(image_id).image
        props = selective_search(image, SelectiveSearchConfig(max_proposals=150))
        ours = predictor.predict([image], [props])[0].instances
        theirs = run_baseline(model, image, props, baseline)
        assert [(i.class_id, i.proposal) for i in ours] == [(i.class_id, i.proposal) for i in theirs]
        np.testing.assert_allclose([i.score for i in ours], [i.score for i in theirs], rtol=1e-5)
        for a, b in zip(ours, theirs):
            assert np.array_equal(a.mask, b.mask)
        compared += len(ours)
    assert compared >= 5


TIE = 1e-4
"""Relative difference of two matching scores within which float32 rounding (a ResNet-50
backward at 448² summed in a different order) may order them either way."""


def test_baseline_gives_the_predictors_instances_at_the_papers_configuration(tiny_voc):
    """ResNet-50 at 448², sub-pixel 8 (the scale where the issue saw them part): two
    64-px images resized to the input, their peaks above a threshold (a handful, so that
    the baseline's per-peak loops stay short), PRM's rules, a batch of both."""
    model = _classifier(5, "resnet50", 448, 8)
    val = VOCDataset(tiny_voc, "val")
    images = [val.get(i).image for i in val.ids[:2]]
    props = [selective_search(image, SelectiveSearchConfig(max_proposals=100)) for image in images]
    with torch.no_grad():  # a threshold that leaves each image at least 3 of its median-rule peaks
        maps = model.class_maps(torch.stack([torch.as_tensor(preprocess_array(i, 448)) for i in images]))
    every = find_peaks(maps, maps.mean((2, 3)), PeakSettings(rule="median", class_threshold=-1e9,
                                                               peak_threshold=-1e9, max_peaks=0), 8)
    threshold = min(float(every.value[every.image == b].sort(descending=True).values[3]) for b in (0, 1))
    rules = Model(model, ("a", "b", "c"),
                  PeakSettings(rule="median", class_threshold=-1e9, peak_threshold=threshold, max_peaks=0),
                  PRMSettings("excitation"), MatchingSettings(score="vanilla", at="input", max_proposals=100),
                  InstanceSettings(confidence="match"))
    ours = Predictor(rules).predict(images, props, keep_maps=False)
    compared = 0
    for image, p, found in zip(images, props, ours):
        theirs = run_baseline(model, image, p, BaselineSettings(448, -1e9, threshold, max_proposals=100))
        assert [i.class_id for i in found.instances] == [i.class_id for i in theirs]
        np.testing.assert_allclose([i.score for i in found.instances], [i.score for i in theirs], rtol=TIE)
        # a different pick only where two proposals tie within float32 rounding (the instance
        # score is the matching score: equal within TIE); on this project's AMD EPYC VM the
        # random ResNet-50 leaves such a tie in one of these images
        parted = [k for k, (a, b) in enumerate(zip(found.instances, theirs)) if a.proposal != b.proposal]
        assert len(parted) <= 1, parted
        compared += len(theirs) - len(parted)
    assert compared >= 4
