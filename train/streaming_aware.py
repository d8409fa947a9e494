"""Streaming-aware training: some batches see what the stream sees.

A stream differs from one offline pass in two ways, and a model trained only offline pays
for both (bundled model, 60 held-out clips, greedy CER: offline 0.335; stream with whole-clip
attention 0.340, so ~0.5 points from the front end; default windows 0.346, ~0.5 more):

* a group-norm front end normalises its first conv layer with causal cumulative statistics
  in the stream (stream/encoder.py) instead of whole-utterance ones;
* each chunk's queries see only left context + chunk + right context.

``StreamingAware.set(on)`` switches a model between the two: on, the first conv layer's
GroupNorm uses the stream's statistics and the encoder's attention the stream's windows.
Drawing it per batch trains one model for both uses. The swapped GroupNorm keeps its
parameters and their names, so checkpoints and exports do not change.
"""

from __future__ import annotations

import torch
from torch import nn

from stream.encoder import IncrementalConvEncoder, group_norm_from_sums


class CausalStatsGroupNorm(nn.GroupNorm):
    """GroupNorm(C, C) that, while ``causal`` is set, normalises with the stream's statistics.

    Conv-0 frame t (of x: (B, C, T)) is normalised with its channel's mean and variance over
    frames [0, end(t)): the first ``seed`` frames share end = seed; after them, runs of
    ``per_frame`` frames share the end of their run (stream/encoder.py's rule; a stream
    shorter than the seed span is normalised over all of it, as here).
    """

    def __init__(self, norm: nn.GroupNorm, seed: int, per_frame: int):
        if norm.num_groups != norm.num_channels or not norm.affine:
            raise ValueError("CausalStatsGroupNorm: only GroupNorm(C, C) with affine parameters (WavLM's front end)")
        super().__init__(norm.num_groups, norm.num_channels, norm.eps, affine=True)
        self.weight, self.bias = norm.weight, norm.bias
        self.seed, self.per_frame = seed, per_frame
        self.causal = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.causal:
            return super().forward(x)
        T = x.shape[-1]
        t = torch.arange(T, device=x.device)
        run_end = self.seed + ((t - self.seed) // self.per_frame + 1) * self.per_frame
        end = torch.where(t < self.seed, self.seed, run_end)
        last = end.clamp(max=T) - 1                                       # (T,) last frame in each statistic
        x64 = x.to(torch.float64)
        total, total_sq = torch.cumsum(x64, -1)[..., last], torch.cumsum(x64 * x64, -1)[..., last]
        return group_norm_from_sums(self, x, total, total_sq, (last + 1).to(torch.float64), channel_dim=1)


class StreamingAware:
    """Switches a WavLM model (anything with ``.wavlm``) between offline and stream-like forwards.

    window: (left, chunk, right) in frames, the stream's geometry (stream.window.WindowConfig).
    """

    def __init__(self, model: nn.Module, window: tuple[int, int, int]):
        backbone = model.wavlm
        self.encoder = backbone.encoder
        self.window = window
        self.norm: CausalStatsGroupNorm | None = None
        if backbone.config.feat_extract_norm == "group":
            layer0 = backbone.feature_extractor.conv_layers[0]
            spans = IncrementalConvEncoder(backbone.feature_extractor, "group").group_norm_spans
            self.norm = CausalStatsGroupNorm(layer0.layer_norm, *spans)
            layer0.layer_norm = self.norm

    def set(self, on: bool) -> None:
        self.encoder.attention_window = self.window if on else None
        if self.norm is not None:
            self.norm.causal = on
