"""Incremental conv feature encoder: every 20 ms frame is computed exactly once.

WavLM's feature encoder is a stack of unpadded 1-D convolutions. Output ``j`` of a layer
with kernel ``k`` and stride ``s`` reads inputs ``[j*s, j*s + k)``, so a layer only has to
keep the tail of its input that the next output still needs. Feeding audio in pieces of
any size (one sample, 320 samples, a whole file) therefore yields exactly the frames the
offline encoder computes, as long as every layer's normalisation is per frame.

Normalisation rules:

* ``layer`` (large-style checkpoints): LayerNorm over channels of each frame: exact.
* ``group`` (base-style checkpoints): GroupNorm(C, C) on layer 0 normalises each channel
  over the *whole utterance*, which a stream cannot know. Our streaming rule is
  **causal cumulative statistics**: conv-0 output frame ``t`` is normalised with the mean
  and variance of that channel over frames ``0..t`` (float64 running sums, so the result
  does not depend on how the audio was chunked). The first ``warmup_frames`` frames use
  the statistics of the first ``warmup_frames`` frames instead (1 s of audio by default):
  this holds the first second back once, which costs nothing because the first window
  waits for chunk + right context anyway, and it avoids normalising the first frames by
  the variance of a few milliseconds. Its drift from offline is measured by ``bench/streaming_fidelity.py``.

State is an explicit :class:`ConvEncoderState`; the module holds no per-stream data, so
one model serves any number of streams.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

#: Conv-0 frames whose statistics seed the ``group`` norm rule: 1 s at the usual 3.2 kHz
#: conv-0 rate. The first window waits for chunk + right context (~1 s) anyway.
GROUP_NORM_WARMUP_FRAMES = 3200


@dataclass(frozen=True)
class GroupNormStats:
    """Running per-channel sums of conv-0 outputs for the ``group`` streaming rule.

    count: frames normalised so far; total, total_sq: float64 sums over them, shape (C,).
    pending: conv-0 outputs held back until ``warmup_frames`` are known, (1, C, T) or None.
    """

    count: int
    total: torch.Tensor
    total_sq: torch.Tensor
    pending: torch.Tensor | None


@dataclass(frozen=True)
class ConvEncoderState:
    """Per-stream state of the incremental conv encoder.

    tails: for each conv layer, its input not yet fully consumed, shape (1, C_in, T_tail).
    frames_out: number of final-layer frames emitted so far.
    group_stats: running statistics for the ``group`` norm rule, or None.
    """

    tails: tuple[torch.Tensor, ...]
    frames_out: int
    group_stats: GroupNormStats | None


class IncrementalConvEncoder:
    """Runs a model's conv feature encoder over audio that arrives in pieces.

    ``feature_extractor`` is the model's ``wavlm.feature_extractor`` (its ``conv_layers``
    each have ``conv``, ``kernel_size``, ``stride``, ``norm`` ("group", "layer" or None),
    ``layer_norm`` (the norm module) and ``activation``).
    """

    def __init__(self, feature_extractor: nn.Module, norm_kind: str,
                 warmup_frames: int = GROUP_NORM_WARMUP_FRAMES):
        if norm_kind not in ("layer", "group"):
            raise ValueError(f"feat_extract_norm must be 'layer' or 'group', got {norm_kind!r}")
        self.layers = list(feature_extractor.conv_layers)
        self.norm_kind = norm_kind
        self.warmup_frames = warmup_frames

    @property
    def receptive_field(self) -> int:
        """Samples that make up one frame (400 for the standard kernels)."""
        field, jump = 1, 1
        for layer in self.layers:
            field += (layer.kernel_size - 1) * jump
            jump *= layer.stride
        return field

    @property
    def total_stride(self) -> int:
        """Samples between consecutive frames (320 for the standard strides)."""
        stride = 1
        for layer in self.layers:
            stride *= layer.stride
        return stride

    def samples_for(self, frames: int) -> int:
        """Total input samples after which at least ``frames`` frames exist (layer norm; group
        norm holds early frames back for its warm-up, so it may need more)."""
        return 0 if frames <= 0 else self.receptive_field + (frames - 1) * self.total_stride

    def init_state(self, dtype: torch.dtype = torch.float32,
                   device: torch.device | str = "cpu") -> ConvEncoderState:
        tails = tuple(torch.zeros(1, layer.conv.in_channels, 0, dtype=dtype, device=device)
                      for layer in self.layers)
        stats = None
        if self.norm_kind == "group":
            channels = self.layers[0].conv.out_channels
            zeros = torch.zeros(channels, dtype=torch.float64, device=device)
            stats = GroupNormStats(0, zeros, zeros.clone(), None)
        return ConvEncoderState(tails, 0, stats)

    def push(self, samples: torch.Tensor, state: ConvEncoderState,
             ) -> tuple[torch.Tensor, ConvEncoderState]:
        """Feed 16 kHz samples; return the newly complete frames.

        samples : torch.Tensor, shape = (n_samples,), float32 16 kHz mono
        returns : (frames, new_state); frames has shape (n_new_frames, C_last)
        """
        x = samples.reshape(1, 1, -1).to(state.tails[0].dtype)
        return self._advance(x, state, end_of_stream=False)

    def flush(self, state: ConvEncoderState) -> tuple[torch.Tensor, ConvEncoderState]:
        """End of stream: release conv-0 frames still held for the group-norm warm-up.

        A stream shorter than the warm-up is normalised over what it has, like offline.
        """
        x = state.tails[0][..., :0]
        return self._advance(x, state, end_of_stream=True)

    def _advance(self, x: torch.Tensor, state: ConvEncoderState, end_of_stream: bool,
                 ) -> tuple[torch.Tensor, ConvEncoderState]:
        """Push x (1, 1, n) through every layer, each keeping the input tail it still needs."""
        tails = list(state.tails)
        stats = state.group_stats
        for i, layer in enumerate(self.layers):
            buf = torch.cat([tails[i], x], dim=-1)
            k, s = layer.kernel_size, layer.stride
            n_out = (buf.shape[-1] - k) // s + 1 if buf.shape[-1] >= k else 0
            tails[i] = buf[..., n_out * s:]
            if n_out:
                y = layer.conv(buf[..., : (n_out - 1) * s + k])
            else:
                y = buf.new_zeros(1, layer.conv.out_channels, 0)
            if i == 0 and stats is not None:
                y, stats = self._group_norm_stream(y, stats, end_of_stream)
                x = layer.activation(y)
            else:
                x = _apply_norm_and_activation(layer, y)
        frames = x[0].transpose(0, 1)                                  # (T_new, C_last)
        return frames, ConvEncoderState(tuple(tails), state.frames_out + frames.shape[0], stats)

    def _group_norm_stream(self, y: torch.Tensor, stats: GroupNormStats, end_of_stream: bool,
                           ) -> tuple[torch.Tensor, GroupNormStats]:
        """Normalise conv-0 outputs y (1, C, T) with causal cumulative statistics."""
        norm: nn.GroupNorm = self.layers[0].layer_norm
        if stats.pending is not None:
            y = torch.cat([stats.pending, y], dim=-1)
        warming_up = stats.count == 0
        if warming_up and y.shape[-1] < self.warmup_frames and not end_of_stream:
            # Hold the frames back until the seed statistics exist.
            return y[..., :0], replace(stats, pending=y)
        if y.shape[-1] == 0:
            return y, replace(stats, pending=None)
        y64 = y[0].to(torch.float64)                                   # (C, T)
        csum = stats.total[:, None] + torch.cumsum(y64, dim=1)         # (C, T)
        csum_sq = stats.total_sq[:, None] + torch.cumsum(y64 * y64, dim=1)
        counts = stats.count + torch.arange(1, y64.shape[1] + 1, dtype=torch.float64,
                                            device=y.device)
        new_stats = GroupNormStats(stats.count + y64.shape[1], csum[:, -1].clone(),
                                   csum_sq[:, -1].clone(), None)
        if warming_up:
            # The warm-up frames all share the statistics of the warm-up span.
            seed = min(self.warmup_frames, y64.shape[1]) - 1
            csum[:, :seed] = csum[:, seed:seed + 1]
            csum_sq[:, :seed] = csum_sq[:, seed:seed + 1]
            counts[:seed] = counts[seed]
        mean = csum / counts
        var = (csum_sq / counts - mean * mean).clamp_min(0.0)
        out = ((y64 - mean) / torch.sqrt(var + norm.eps)).to(y.dtype)
        out = out * norm.weight[:, None] + norm.bias[:, None]
        return out[None], new_stats


def _apply_norm_and_activation(layer: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """Per-frame norm (LayerNorm over channels, or none) then activation; y: (1, C, T)."""
    if layer.norm == "layer":
        y = layer.layer_norm(y.transpose(-2, -1)).transpose(-2, -1)
    elif layer.norm is not None:
        raise ValueError(f"conv layer norm {layer.norm!r} cannot be streamed per frame")
    return layer.activation(y)
