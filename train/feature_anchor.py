"""Hold the speaker head's frame features near a fixed model's while the backbone trains.

The speaker head (and the change detector trained on its output) reads a weighted sum of
every layer, mostly the lower ones, so a run that moves the whole backbone for CTC moves the
speaker features too (runs 13-17 in train/README.md: better captions, worse speaker changes).
``FeatureAnchor`` keeps a frozen copy of the starting model (the teacher) and returns the
relative squared distance between the trained model's speaker frame features and the
teacher's on the same audio, a loss that lets the layers change what CTC needs while the
features the speaker side reads stay where its head and detector were fitted.

Two things would make the teacher's features differ from the student's for reasons other
than training: SpecAugment (the student masks spans, the teacher in eval mode does not), so
masked frames are left out of the distance; and stream-like batches
(train/streaming_aware.py), so the teacher is switched with the student.
"""

from __future__ import annotations

import torch

from model import WavLMConfig, WavLMForCTCWithSpeaker
from train.streaming_aware import StreamingAware


class FeatureAnchor:
    """A frozen teacher and the distance of a student's speaker frame features to its own.

    config, state: the teacher's (train.train.exported_start of the run's --init model).
    window: (left, chunk, right) frames of the stream-like batches, or None when the run has none.
    """

    def __init__(self, config: WavLMConfig, state: dict[str, torch.Tensor], device: torch.device,
                 window: tuple[int, int, int] | None):
        self.teacher = WavLMForCTCWithSpeaker(config).to(device)
        self.teacher.load_state_dict(state)
        self.teacher.eval()   # no SpecAugment
        self.teacher.requires_grad_(False)
        self.aware = StreamingAware(self.teacher, window) if window is not None else None

    def set_streaming(self, on: bool) -> None:
        """Switch the teacher as the student's StreamingAware was switched for this batch."""
        if self.aware is not None:
            self.aware.set(on)

    def loss(self, student_features: torch.Tensor, audio: torch.Tensor, attention_mask: torch.Tensor,
             frame_mask: torch.Tensor, masked: torch.Tensor | None) -> torch.Tensor:
        """sum ||s - t||^2 / sum ||t||^2 over the valid, unmasked frames (a scalar; 0 where they agree).

        student_features: (B, T, P) the student's speaker_frame_features (with gradient);
        audio, attention_mask: (B, N) the batch both models see; frame_mask: (B, T) valid frames;
        masked: (B, T) the student's SpecAugment time mask, or None.
        """
        with torch.no_grad():
            out = self.teacher.wavlm(audio, attention_mask, True)
            target = self.teacher.speaker_frame_features(out.hidden_states)
        keep = frame_mask if masked is None else frame_mask & ~masked.bool()
        keep = keep[..., None].to(student_features.dtype)
        diff = ((student_features.float() - target.float()) ** 2 * keep).sum()
        return diff / ((target.float() ** 2) * keep).sum().clamp_min(1e-8)
