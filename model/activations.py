"""Activation functions by the names transformers' configs use."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from .linear import onednn_off_in_this_thread


def _gelu(x: torch.Tensor) -> torch.Tensor:
    if onednn_off_in_this_thread() and x.dim() >= 2 and x.shape[-1] > 1 and x.shape[-2] > 1:
        # torch's GELU takes oneDNN for contiguous float input while the process-wide switch is on
        # (oneDNN keeps state per shape); on a transposed view it runs its own kernel, the one the
        # switch off gives, bit for bit (tests/test_model_linear.py). See model.linear.without_onednn.
        return F.gelu(x.transpose(-1, -2)).transpose(-1, -2)
    return F.gelu(x)


def _gelu_new(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": _gelu,
    "gelu_new": _gelu_new,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
}


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; supported: {sorted(ACTIVATIONS)}") from None
