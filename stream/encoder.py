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
  **causal cumulative statistics per output frame**: the conv-0 frames that output frame
  ``j`` adds to the receptive field (64 of them for the standard strides) are normalised
  with the mean and variance of that channel over every conv-0 frame up to the end of
  frame ``j``'s receptive field. So a frame's statistics are those of all the audio it
  depends on, nothing later: no frame waits for more audio than the layer-norm case, and
  the statistics are computed once per output frame rather than once per conv-0 frame
  (float64 running sums over fixed spans, so the result does not depend on how the audio
  was chunked). The first ``warmup_frames`` conv-0 frames (1 s of audio by default,
  rounded up to an output frame) share the statistics of that span instead: this holds the
  first second back once, which costs nothing because the first window waits for chunk +
  right context anyway, and it avoids normalising the first frames by the variance of a
  few milliseconds. Its drift from offline is measured by ``bench/streaming_fidelity.py``.

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

    count: conv-0 frames normalised so far; total, total_sq: float64 sums over them, shape (C,).
    pending: conv-0 outputs held back until their output frame (or the warm-up span) is
             complete, (1, C, T) or None.
    """

    count: int
    total: torch.Tensor
    total_sq: torch.Tensor
    pending: torch.Tensor | None


@dataclass(frozen=True)
class ConvEncoderState:
    """Per-stream state of the incremental conv encoder.

    tails: for each conv layer, its input not yet fully consumed: (1, T_tail, C_in) for a
        time-major (layer-norm) encoder, else (1, C_in, T_tail).
    frames_out: number of final-layer frames emitted so far.
    group_stats: running statistics for the ``group`` norm rule, or None.
    """

    tails: tuple[torch.Tensor, ...]
    frames_out: int
    group_stats: GroupNormStats | None


class IncrementalConvEncoder:
    """Runs a model's conv feature encoder over audio that arrives in pieces.

    ``feature_extractor`` is the model's ``wavlm.feature_extractor`` (its ``conv_layers``
    are model.conv.ConvLayer: ``conv`` and ``frames`` (channels-first and time-major),
    ``norm_and_activation``, ``kernel_size``, ``stride``, ``norm`` ("group", "layer" or None),
    ``layer_norm`` and ``activation``).
    """

    def __init__(self, feature_extractor: nn.Module, norm_kind: str,
                 warmup_frames: int = GROUP_NORM_WARMUP_FRAMES):
        if norm_kind not in ("layer", "group"):
            raise ValueError(f"feat_extract_norm must be 'layer' or 'group', got {norm_kind!r}")
        self.layers = list(feature_extractor.conv_layers)
        self.norm_kind = norm_kind
        self.time_major = bool(feature_extractor.time_major)    # the layout the offline encoder uses
        self._time_dim = 1 if self.time_major else 2
        self.warmup_frames = warmup_frames
        # Group-norm rule spans, in conv-0 frames: output frame 0 completes after `first`, each
        # later one after `per_frame` more; the warm-up span ends at the first such boundary at
        # or after warmup_frames.
        conv0 = self.layers[0]
        first = (self.receptive_field - conv0.kernel_size) // conv0.stride + 1
        self._conv0_per_frame = self.total_stride // conv0.stride
        self._seed_frames = first + self._conv0_per_frame * max(0, -(-(warmup_frames - first)
                                                                     // self._conv0_per_frame))

    @property
    def group_norm_spans(self) -> tuple[int, int]:
        """(seed, per_frame) of the ``group`` rule, in conv-0 frames: the first ``seed`` share one
        set of statistics; after them, each run of ``per_frame`` is normalised with the
        statistics of everything up to its end."""
        return self._seed_frames, self._conv0_per_frame

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
        tails = tuple(torch.zeros((1, 0, c) if self.time_major else (1, c, 0), dtype=dtype, device=device)
                      for c in (layer.conv.in_channels for layer in self.layers))
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
        x = samples.reshape((1, -1, 1) if self.time_major else (1, 1, -1)).to(state.tails[0].dtype)
        return self._advance(x, state, end_of_stream=False)

    def flush(self, state: ConvEncoderState) -> tuple[torch.Tensor, ConvEncoderState]:
        """End of stream: release conv-0 frames still held for the group-norm warm-up.

        A stream shorter than the warm-up is normalised over what it has, like offline.
        """
        x = state.tails[0].narrow(self._time_dim, 0, 0)
        return self._advance(x, state, end_of_stream=True)

    def _advance(self, x: torch.Tensor, state: ConvEncoderState, end_of_stream: bool,
                 ) -> tuple[torch.Tensor, ConvEncoderState]:
        """Push x ((1, n, 1) time-major, else (1, 1, n)) through every layer, each keeping the input
        tail it still needs."""
        tails = list(state.tails)
        stats = state.group_stats
        dim = self._time_dim
        for i, layer in enumerate(self.layers):
            buf = torch.cat([tails[i], x], dim=dim)
            k, s = layer.kernel_size, layer.stride
            n_out = (buf.shape[dim] - k) // s + 1 if buf.shape[dim] >= k else 0
            tails[i] = buf.narrow(dim, n_out * s, buf.shape[dim] - n_out * s)
            if self.time_major:
                x = layer.frames(buf)                                   # (1, n_out, C_out)
                continue
            if n_out:
                y = layer.conv(buf[..., : (n_out - 1) * s + k])
            else:
                y = buf.new_zeros(1, layer.conv.out_channels, 0)
            if i == 0 and stats is not None:
                y, stats = self._group_norm_stream(y, stats, end_of_stream)
                x = layer.activation(y)
            else:
                x = _apply_norm_and_activation(layer, y)
        frames = x[0] if self.time_major else x[0].transpose(0, 1)     # (T_new, C_last)
        return frames, ConvEncoderState(tuple(tails), state.frames_out + frames.shape[0], stats)

    def _group_norm_stream(self, y: torch.Tensor, stats: GroupNormStats, end_of_stream: bool,
                           ) -> tuple[torch.Tensor, GroupNormStats]:
        """Normalise conv-0 outputs y (1, C, T) with causal cumulative statistics per output frame.

        Frames whose output frame is not complete yet stay in ``stats.pending``.
        """
        if stats.pending is not None:
            y = torch.cat([stats.pending, y], dim=-1)
        y = y[0]                                                         # (C, T)
        done, count, total, total_sq = [], stats.count, stats.total, stats.total_sq
        if count == 0:
            if y.shape[-1] < self._seed_frames and not end_of_stream:
                return y[None, :, :0], replace(stats, pending=y[None])   # wait for the seed span
            # The seed span (or, for a stream shorter than it, everything: like offline) shares
            # one set of statistics.
            seed = min(y.shape[-1], self._seed_frames)
            if seed:
                out, total, total_sq, count = self._normalise_span(y[:, :seed], total, total_sq, count)
                done.append(out)
            y = y[:, seed:]
        per_frame = self._conv0_per_frame
        n_units = y.shape[-1] // per_frame
        if n_units:
            units = y[:, :n_units * per_frame].reshape(y.shape[0], n_units, per_frame)   # (C, U, F)
            u64 = units.to(torch.float64)
            sums = total[:, None] + torch.cumsum(u64.sum(-1), dim=1)                     # (C, U)
            sums_sq = total_sq[:, None] + torch.cumsum((u64 * u64).sum(-1), dim=1)
            counts = count + per_frame * torch.arange(1, n_units + 1, dtype=torch.float64, device=y.device)
            done.append(self._normalise(units, sums[..., None], sums_sq[..., None], counts[:, None])
                        .reshape(y.shape[0], -1))
            total, total_sq, count = sums[:, -1], sums_sq[:, -1], count + n_units * per_frame
            y = y[:, n_units * per_frame:]
        pending = y[None] if y.shape[-1] else None
        if end_of_stream and pending is not None:
            # A last partial span feeds no output frame; normalise it over everything anyway.
            out, total, total_sq, count = self._normalise_span(y, total, total_sq, count)
            done.append(out)
            pending = None
        out = torch.cat(done, dim=-1) if done else y[:, :0]
        return out[None], GroupNormStats(count, total, total_sq, pending)

    def _normalise_span(self, y: torch.Tensor, total: torch.Tensor, total_sq: torch.Tensor, count: int):
        """Add the span y (C, T) to the running sums and normalise all of it with the result.

        Returns (normalised (C, T), total, total_sq, count) after the span.
        """
        y64 = y.to(torch.float64)
        total, total_sq, count = total + y64.sum(1), total_sq + (y64 * y64).sum(1), count + y.shape[-1]
        return self._normalise(y, total[:, None], total_sq[:, None], count), total, total_sq, count

    def _normalise(self, y: torch.Tensor, total: torch.Tensor, total_sq: torch.Tensor, count) -> torch.Tensor:
        """Layer 0's GroupNorm of y (C, ...) from running sums (group_norm_from_sums)."""
        return group_norm_from_sums(self.layers[0].layer_norm, y, total, total_sq, count)


def group_norm_from_sums(norm: nn.GroupNorm, y: torch.Tensor, total: torch.Tensor, total_sq: torch.Tensor, count,
                         channel_dim: int = 0) -> torch.Tensor:
    """(y - mean) / std * weight + bias of a GroupNorm(C, C), statistics from float64 sums over ``count`` frames.

    y float with channels at ``channel_dim`` ((C, ...) or (B, C, ...)); total, total_sq broadcast
    against y with float64 values; count a number or a float64 tensor broadcasting the same way.
    The per-frame work stays in y's dtype. Shared by the stream's group-norm rule and the
    training-time copy of it (train/streaming_aware.py), so both compute the same values.
    """
    mean = total / count
    var = (total_sq / count - mean * mean).clamp_min(0.0)
    scale = torch.rsqrt(var + norm.eps).to(y.dtype)
    shape = (-1,) + (1,) * (y.dim() - channel_dim - 1)
    return (y - mean.to(y.dtype)) * (scale * norm.weight.view(shape)) + norm.bias.view(shape)


def _apply_norm_and_activation(layer: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """Per-frame norm (LayerNorm over channels, or none) then activation, channels-first y: (1, C, T),
    with the same operations as ConvLayer.forward (so the values are those of the offline encoder)."""
    if layer.norm == "layer":
        y = layer.layer_norm(y.transpose(-2, -1)).transpose(-2, -1)
    elif layer.norm is not None:
        raise ValueError(f"conv layer norm {layer.norm!r} cannot be streamed per frame")
    return layer.activation(y)
