"""train/average.py: the weight average of several exports of one model."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from model import WavLMForCTCWithSpeaker, load_model
from train.average import average_exports, main
from train.change_detector import DEFAULT_SPEC
from train.export import export
from train.train import build_config

DETECTOR = dict(DEFAULT_SPEC, channels=8, dilations=[1, 2], lookahead=3)


def write_export(tmp_path, name: str, seed: int, detector: bool = True, **config_changes):
    """A tiny exported model with random weights, a change detector (unless not ``detector``: as
    train.export writes it) and the given config changes."""
    config = build_config("tiny", ["a", "b"])
    if detector:
        config = dataclasses.replace(config, speaker_head=dict(config.speaker_head, change_detector=DETECTOR))
    config = dataclasses.replace(config, **config_changes)
    torch.manual_seed(seed)
    model = WavLMForCTCWithSpeaker(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return export(model.state_dict(), config.to_dict(), tmp_path / name)


def test_average_is_the_mean_of_each_weight_and_keeps_the_first_detector(tmp_path):
    first, second = write_export(tmp_path, "one", 0), write_export(tmp_path, "two", 1, hidden_dropout=0.1)
    out = average_exports([first, second], tmp_path / "avg")
    a, b, avg = (load_file(str(d / "model.safetensors")) for d in (first, second, out))
    assert avg.keys() == a.keys()
    detector = [k for k in a if k.startswith("speaker_head.change_detector.")]
    averaged = [k for k in a if k not in detector]
    assert detector and averaged
    for name in detector:
        assert torch.equal(avg[name], a[name])
    for name in averaged:
        assert torch.allclose(avg[name], (a[name] + b[name]) / 2, atol=1e-7), name
    assert not torch.equal(avg["lm_head.weight"], a["lm_head.weight"])
    # The first export's config is written, and the package loads the result.
    assert json.loads((out / "config.json").read_text())["hidden_dropout"] == 0.0
    assert load_model(out).change_detector is not None


def test_exports_without_a_detector_average_with_those_that_have_one(tmp_path):
    with_detector, fresh = write_export(tmp_path, "one", 0), write_export(tmp_path, "two", 1, detector=False)
    a, b = (load_file(str(d / "model.safetensors")) for d in (with_detector, fresh))
    for order, detector_kept in (([with_detector, fresh], True), ([fresh, with_detector], False)):
        out = average_exports(order, tmp_path / "avg")
        avg = load_file(str(out / "model.safetensors"))
        assert torch.allclose(avg["lm_head.weight"], (a["lm_head.weight"] + b["lm_head.weight"]) / 2, atol=1e-7)
        assert (load_model(out).change_detector is not None) == detector_kept
        assert any(k.startswith("speaker_head.change_detector.") for k in avg) == detector_kept


def test_an_export_averaged_with_itself_computes_the_same_model(tmp_path):
    only = write_export(tmp_path, "one", 0)
    out = average_exports([only, only], tmp_path / "avg")
    x = torch.randn(1, 8000) * 0.1
    with torch.no_grad():
        assert torch.equal(load_model(only).eval()(x).logits, load_model(out).eval()(x).logits)


def test_other_architectures_and_missing_exports_are_refused_by_name(tmp_path):
    first = write_export(tmp_path, "one", 0)
    wider = write_export(tmp_path, "wide", 1, intermediate_size=48)
    with pytest.raises(ValueError, match="another architecture.*intermediate_size"):
        average_exports([first, wider], tmp_path / "avg")
    with pytest.raises(ValueError, match="at least two"):
        average_exports([first], tmp_path / "avg")
    with pytest.raises(SystemExit, match="not an exported model: no config.json"):
        main([str(first), str(tmp_path / "nowhere"), "--out", str(tmp_path / "avg")])
    assert not (tmp_path / "avg").exists()
