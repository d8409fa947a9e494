"""FeatureAnchor: the distance of a student's speaker frame features to a frozen teacher's."""
from __future__ import annotations

import copy

import pytest
import torch

from model import WavLMForCTCWithSpeaker
from train.feature_anchor import FeatureAnchor
from train.streaming_aware import StreamingAware
from train.train import build_config

WINDOW = (20, 8, 4)


def _student_and_anchor(window=None):
    torch.manual_seed(0)
    student = WavLMForCTCWithSpeaker(build_config("tiny", ["a", "b"])).eval()
    anchor = FeatureAnchor(student.config, copy.deepcopy(student.state_dict()), torch.device("cpu"), window)
    return student, anchor


def _batch():
    torch.manual_seed(1)
    audio = torch.randn(2, 16000) * 0.1
    attention_mask = torch.ones(2, 16000, dtype=torch.long)
    attention_mask[1, 11000:] = 0
    audio[1, 11000:] = 0.0
    return audio, attention_mask


def _value(loss: torch.Tensor) -> float:
    return float(loss.detach())


def _features(student, audio, attention_mask, masked=None):
    out = student(audio, attention_mask, output_hidden_states=True, mask_time_indices=masked)
    return student.speaker_frame_features(out.hidden_states), out.frame_mask


def test_zero_for_the_teacher_itself_positive_once_the_student_moves():
    student, anchor = _student_and_anchor()
    audio, attention_mask = _batch()
    feats, frame_mask = _features(student, audio, attention_mask)
    assert _value(anchor.loss(feats, audio, attention_mask, frame_mask, None)) < 1e-10
    with torch.no_grad():
        student.wavlm.encoder.layers[0].feed_forward.output_dense.weight.mul_(1.5)
    feats, frame_mask = _features(student, audio, attention_mask)
    moved = anchor.loss(feats, audio, attention_mask, frame_mask, None)
    assert _value(moved) > 1e-4
    moved.backward()   # the loss reaches the student's backbone, not the frozen teacher
    assert student.wavlm.encoder.layers[0].feed_forward.output_dense.weight.grad is not None
    assert all(p.grad is None for p in anchor.teacher.parameters())


def test_masked_and_padded_frames_are_left_out():
    student, anchor = _student_and_anchor()
    audio, attention_mask = _batch()
    feats, frame_mask = _features(student, audio, attention_mask)
    masked = torch.zeros_like(frame_mask)
    masked[:, 5:15] = True
    changed = feats.detach().clone()
    changed[:, 5:15] += 3.0                     # masked frames
    changed[1, ~frame_mask[1]] += 3.0           # padding of the shorter clip
    assert not bool(frame_mask[1].all())
    assert _value(anchor.loss(changed, audio, attention_mask, frame_mask, masked)) < 1e-10
    assert _value(anchor.loss(changed, audio, attention_mask, frame_mask, None)) > 1e-2


@pytest.mark.parametrize("teacher_follows", [True, False])
def test_the_teacher_is_switched_to_stream_like_batches_with_the_student(teacher_follows):
    student, anchor = _student_and_anchor(WINDOW)
    StreamingAware(student, WINDOW).set(True)
    anchor.set_streaming(teacher_follows)
    audio, attention_mask = _batch()
    feats, frame_mask = _features(student, audio, attention_mask)
    loss = _value(anchor.loss(feats, audio, attention_mask, frame_mask, None))
    assert (loss < 1e-10) if teacher_follows else (loss > 1e-6)
