"""The baseline (icn_rt.baseline) and icn-rt's predictor give the same instances
when icn-rt is set to the PRM reference's rules."""

import numpy as np
import pytest
import torch

from icn_rt.baseline import BaselineSettings, run_baseline
from icn_rt.data.selective_search import SelectiveSearchConfig, selective_search
from icn_rt.data.voc import VOCDataset
from icn_rt.matching import InstanceSettings, MatchingSettings
from icn_rt.models.classifier import ClassifierSettings, PeakClassifier
from icn_rt.models.peaks import PeakSettings
from icn_rt.models.prm import PRMSettings
from icn_rt.models.store import Model
from icn_rt.runtime.predictor import Predictor


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    m = PeakClassifier(3, ClassifierSettings(backbone="small", input_size=80, sub_pixel=4))
    for bn in m.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


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
