"""Optional strided-convolution adapter on top of the encoder (``add_adapter``)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import WavLMConfig


class AdapterLayer(nn.Module):
    def __init__(self, dim: int, kernel_size: int, stride: int):
        super().__init__()
        self.conv = nn.Conv1d(dim, 2 * dim, kernel_size, stride=stride, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, T) -> (B, C, (T - 1) // stride + 1) for kernel 3, via GLU over channels."""
        return F.glu(self.conv(x), dim=1)


class Adapter(nn.Module):
    """Optional Linear + LayerNorm down-projection, then num_adapter_layers strided GLU convolutions."""

    def __init__(self, config: WavLMConfig):
        super().__init__()
        out = config.output_hidden_size
        if out != config.hidden_size:
            self.proj = nn.Linear(config.hidden_size, out)
            self.proj_layer_norm = nn.LayerNorm(out)
        else:
            self.proj = self.proj_layer_norm = None
        self.layers = nn.ModuleList(
            AdapterLayer(out, config.adapter_kernel_size, config.adapter_stride) for _ in range(config.num_adapter_layers)
        )
        self.layerdrop = config.layerdrop
        self.stride = config.adapter_stride

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frame counts after the adapter (transformers' formula), (B,) -> (B,)."""
        for _ in self.layers:
            lengths = torch.div(lengths - 1, self.stride, rounding_mode="floor") + 1
        return lengths

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: (B, T, H) -> (B, T', output_hidden_size)."""
        if self.proj is not None:
            hidden = self.proj_layer_norm(self.proj(hidden))
        x = hidden.transpose(1, 2)
        for layer in self.layers:
            if not self.training or torch.rand([]).item() > self.layerdrop:
                x = layer(x)
        return x.transpose(1, 2)
