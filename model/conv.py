"""Convolutional front end: feature encoder, feature projection, positional convolution."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .activations import get_activation
from .config import WavLMConfig
from .linear import Linear, linear, onednn_off_in_this_thread


def conv_output_lengths(lengths: torch.Tensor, kernels: tuple[int, ...], strides: tuple[int, ...]) -> torch.Tensor:
    """Valid output lengths of a stack of unpadded 1-D convolutions, lengths (B,) int -> (B,) int."""
    for kernel, stride in zip(kernels, strides):
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    return lengths


def conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int = 1,
           padding: int = 0, groups: int = 1) -> torch.Tensor:
    """``F.conv1d``: x (B, C_in, T), weight (C_out, C_in / groups, k) -> (B, C_out, T').

    Inside ``model.linear.without_onednn`` it calls the native convolution that torch picks when
    oneDNN is switched off, directly (per group, as torch does then), so the numbers are those of
    ``torch.backends.mkldnn.enabled = False`` without switching that flag for every thread.
    oneDNN keeps state per input shape, which a stream's windows reuse, but the finals' passes
    over segments of every length would pile up (stream/pipeline.py ``offline_log_probs``).
    """
    if not onednn_off_in_this_thread() or x.device.type != "cpu":
        return F.conv1d(x, weight, bias, stride=stride, padding=padding, groups=groups)
    if padding:
        x = F.pad(x, (padding, padding))
    kernel, strides = (1, weight.shape[-1]), (1, stride)
    xs, ws = x.unsqueeze(2).chunk(groups, 1), weight.unsqueeze(2).chunk(groups, 0)
    bs = [None] * groups if bias is None else bias.chunk(groups)
    out = [torch.ops.aten._slow_conv2d_forward(xg, wg, kernel, bg, strides, (0, 0)) for xg, wg, bg in zip(xs, ws, bs)]
    return (out[0] if groups == 1 else torch.cat(out, 1)).squeeze(2)


class ConvLayer(nn.Module):
    """Conv1d -> optional norm -> activation.

    norm: None, "group" (GroupNorm(C, C): each channel normalised over the whole utterance) or
    "layer" (LayerNorm over channels, per frame, so it streams exactly).
    """

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int, stride: int, bias: bool,
                 norm: str | None, activation: str):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.conv = nn.Conv1d(in_dim, out_dim, kernel_size, stride=stride, bias=bias)
        self.norm = norm
        if norm == "group":
            self.layer_norm = nn.GroupNorm(out_dim, out_dim, affine=True)
        elif norm == "layer":
            self.layer_norm = nn.LayerNorm(out_dim, elementwise_affine=True)
        elif norm is not None:
            raise ValueError(f"unknown conv norm {norm!r}")
        self.activation = get_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C_in, T) -> (B, C_out, T') with T' = (T - kernel_size) // stride + 1."""
        x = conv1d(x, self.conv.weight, self.conv.bias, self.stride)
        if self.norm == "group":
            x = self.layer_norm(x)
        elif self.norm == "layer":
            x = self.layer_norm(x.transpose(1, 2)).transpose(1, 2)
        return self.activation(x)

    def frames(self, x: torch.Tensor) -> torch.Tensor:
        """The same, time-major, for per-frame norms (layer or none): x (B, T, C_in) -> (B, T', C_out)."""
        return self.norm_and_activation(self.conv_frames(x))

    def conv_frames(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution alone, time-major: (B, T, C_in) -> (B, T', C_out).

        One matrix product of the strided windows (B, T', C_in * kernel) with the weight
        viewed as (C_out, C_in * kernel): the same sums as Conv1d, but with the channels
        last, so the layer norm over channels and the next layer read contiguous rows (channels
        first, every layer's output is copied twice around its LayerNorm).
        """
        if x.shape[1] < self.kernel_size:
            return x.new_zeros(x.shape[0], 0, self.conv.out_channels)
        windows = x.unfold(1, self.kernel_size, self.stride)                   # (B, T', C_in, kernel)
        n = windows.shape[1]
        weight = self.conv.weight.reshape(self.conv.out_channels, -1)           # (C_out, C_in * kernel)
        return linear(windows.reshape(x.shape[0], n, -1), weight, self.conv.bias)  # (B, T', C_out)

    def norm_and_activation(self, y: torch.Tensor) -> torch.Tensor:
        """Per-frame norm (LayerNorm over channels, or none) then activation, time-major (B, T, C)."""
        if self.norm == "layer":
            y = self.layer_norm(y)
        elif self.norm is not None:
            raise ValueError(f"conv layer norm {self.norm!r} is not per frame (it cannot be streamed that way)")
        return self.activation(y)


class FeatureEncoder(nn.Module):
    """Raw waveform (B, N) -> conv features (B, C, T), total stride prod(conv_stride)."""

    def __init__(self, config: WavLMConfig):
        super().__init__()
        layers = []
        in_dim = 1
        for i, (dim, kernel, stride) in enumerate(zip(config.conv_dim, config.conv_kernel, config.conv_stride)):
            if config.feat_extract_norm == "layer":
                norm = "layer"
            else:
                norm = "group" if i == 0 else None
            layers.append(ConvLayer(in_dim, dim, kernel, stride, config.conv_bias, norm, config.feat_extract_activation))
            in_dim = dim
        self.conv_layers = nn.ModuleList(layers)

    @property
    def time_major(self) -> bool:
        """Layer-norm encoders run time-major (ConvLayer.frames): 0.62-0.79x the time of channels-first
        for a 768-wide model's 512-channel encoder on 10-60 s (`bench/rtf.py`'s base checkpoint).
        Group-norm encoders stay channels-first: their only norm reduces over time, no layer
        transposes, and with few channels (the bundled model) the strided windows cost more
        than they save (1.7x slower)."""
        return all(layer.norm == "layer" for layer in self.conv_layers)

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        """input_values: (B, N) float -> (B, conv_dim[-1], T) (time-major encoders: a transposed view)."""
        if self.time_major:
            x = input_values[:, :, None]                                        # (B, N, 1)
            for layer in self.conv_layers:
                x = layer.frames(x)
            return x.transpose(1, 2)
        x = input_values[:, None]
        for layer in self.conv_layers:
            x = layer(x)
        return x


class FeatureProjection(nn.Module):
    """LayerNorm over conv channels, then Linear to the transformer width."""

    def __init__(self, in_dim: int, hidden_size: int, eps: float, dropout: float = 0.0):
        super().__init__()
        self.layer_norm = nn.LayerNorm(in_dim, eps=eps)
        self.projection = Linear(in_dim, hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: (B, T, C) -> hidden (B, T, H)."""
        return self.forward_with_normed(features)[0]

    def forward_with_normed(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features: (B, T, C) -> (hidden (B, T, H), layer-normed features (B, T, C))."""
        normed = self.layer_norm(features)
        return self.dropout(self.projection(normed)), normed


class WeightNormConv1d(nn.Module):
    """Conv1d whose weight is weight_g * weight_v / ||weight_v||, the norm taken over all dims but `dim`.

    Stored as plain parameters ``weight_g`` / ``weight_v`` (the old ``torch.nn.utils.weight_norm`` key
    names); the loader maps the newer ``parametrizations.weight.original0/1`` keys onto them.
    """

    def __init__(self, channels: int, kernel_size: int, groups: int, dim: int = 2):
        super().__init__()
        self.dim = dim
        self.padding = kernel_size // 2
        self.groups = groups
        g_shape = [1, 1, 1]
        g_shape[dim] = [channels, channels // groups, kernel_size][dim]
        self.weight_v = nn.Parameter(torch.empty(channels, channels // groups, kernel_size))
        self.weight_g = nn.Parameter(torch.ones(g_shape))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.normal_(self.weight_v, std=2 * (1 / (kernel_size * channels)) ** 0.5)
        self._cached: tuple[tuple, torch.Tensor] | None = None

    @property
    def weight(self) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self._compute_weight()
        # Without autograd the weight only changes when a parameter does: reuse it (streaming
        # runs the positional conv once per window; recomputing the norm cost ~6% of a window).
        try:
            versions = (self.weight_v._version, self.weight_g._version)
        except RuntimeError:
            versions = None  # parameters created under inference_mode have no version counter
        key = (versions, self.weight_v.data_ptr(), self.weight_g.data_ptr(), self.weight_v.dtype,
               self.weight_v.device)
        if self._cached is None or self._cached[0] != key:
            with torch.no_grad():
                self._cached = (key, self._compute_weight())
        return self._cached[1]

    def _compute_weight(self) -> torch.Tensor:
        dims = [d for d in range(3) if d != self.dim]
        return self.weight_v * (self.weight_g / self.weight_v.norm(dim=dims, keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, T) -> (B, C, T + 1 - kernel_size % 2)."""
        return conv1d(x, self.weight, self.bias, padding=self.padding, groups=self.groups)


class PositionalConvEmbedding(nn.Module):
    """Grouped, weight-normed convolution over time; 'same' length output (B, T, H) -> (B, T, H)."""

    def __init__(self, hidden_size: int, kernel_size: int, groups: int, activation: str):
        super().__init__()
        self.kernel_size = kernel_size
        self.conv = WeightNormConv1d(hidden_size, kernel_size, groups)
        self.activation = get_activation(activation)

    def forward(self, hidden: torch.Tensor, first_row: int = 0) -> torch.Tensor:
        """hidden: (B, T, H) -> positional embeddings of rows [first_row, T), (B, T - first_row, H).

        Rows before first_row are not computed (a stream only needs its query rows); the
        zero padding is still at the edges of ``hidden``, so the rows equal the full output's.
        """
        T = hidden.shape[1]
        if not 0 <= first_row <= T:
            raise ValueError(f"first_row must be in [0, {T}], got {first_row}")
        if first_row == T:
            return hidden[:, T:]
        # Output row t reads input rows [t - pad, t - pad + kernel): pad only where those fall
        # outside (for an even kernel one row less on the right than transformers' padding, whose
        # extra last output it drops).
        pad = self.conv.padding
        start = first_row - pad
        x = hidden[:, max(0, start):].transpose(1, 2)
        x = F.pad(x, (max(0, -start), self.kernel_size - 1 - pad))
        x = conv1d(x, self.conv.weight, self.conv.bias, groups=self.conv.groups)
        return self.activation(x).transpose(1, 2)
