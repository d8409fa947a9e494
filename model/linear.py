"""The transformer's Linear layer: oneDNN's matrix product at inference on the CPU.

``torch.nn.Linear`` on the CPU calls a BLAS product that runs the stream's small products (48
rows: a 0.64 s chunk plus its 0.32 s look-ahead) well below the machine's peak. oneDNN's
linear primitive (``torch.ops.mkldnn._linear_pointwise``, what torch's own compiler emits for
CPU inference) runs the same products 1.2-1.5x faster on the 2-core AVX-512 machine we measure
on (``bench/rtf.py``: a base-size stream 1.25-1.43x overall), from the same weight tensor, so it
costs no memory. Results differ from ``F.linear`` by float rounding only (a different
summation order: ~2e-6 on unit-scale outputs).

At inference a ``Linear`` also keeps its weight reordered once into oneDNN's own blocked layout
(``torch.ops.mkldnn._reorder_linear_weight``; torch's compiler does the same for CPU inference),
on which the primitive's kernels run faster than on the plain row-major weight: 48-row products
1.15-1.35x, a base-size stream 1.15-1.2x overall, with bit for bit the same results (a one-row
product would take another kernel with the packed weight, so one row keeps the plain one). It
costs a second copy of the Linear weights (the bundled model 20 MB, a base-size one 340 MB),
made on a layer's first inference call and made again when its weight changes
(``load_state_dict``, training, ``.to``); ``set_packed_weights(model, False)`` keeps a model
to one copy.

``Linear`` is a drop-in ``nn.Linear`` (and ``linear`` the function, for the time-major conv
front end's products of strided windows with its weight): same parameters and state-dict names, the same
``F.linear`` whenever autograd needs the graph (training) or the product is not one oneDNN
serves here (another device or dtype, bfloat16 on a CPU without AVX-512, or oneDNN switched off
with ``torch.backends.mkldnn`` or, for one thread, ``without_onednn``).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F


def _onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _onednn_bf16_available() -> bool:
    # oneDNN builds no bfloat16 inner product without AVX-512 (an AVX2-only CPU raises "could not
    # create a primitive descriptor"); there bfloat16 products go to F.linear, which emulates them.
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return check is not None and bool(check())


_AVAILABLE = _onednn_linear_available()
_ONEDNN_DTYPES = (torch.float32, torch.bfloat16) if _AVAILABLE and _onednn_bf16_available() else (torch.float32,)
_PACK_AVAILABLE = _AVAILABLE and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
_enabled = True
_prepack = True
_this_thread = threading.local()
# The row count a packed layout is chosen for (oneDNN picks the same blocking for any count from
# a few dozen up, measured here): the stream's windows, 32-48 query rows and more in a batch.
_PACK_ROWS = 48


@contextlib.contextmanager
def onednn_linear(enabled: bool):
    """Switch the oneDNN path on or off for the block (process-wide): benchmarks' A/B."""
    global _enabled
    before, _enabled = _enabled, enabled
    try:
        yield
    finally:
        _enabled = before


@contextlib.contextmanager
def prepacked_weights(enabled: bool):
    """Use (or not) the Linear weights packed in oneDNN's layout, process-wide, for the block:
    the benchmarks' A/B. (The packed copies already made stay until their layer is freed; to keep
    one model to one copy of its weights, use ``set_packed_weights(model, False)``.)"""
    global _prepack
    before, _prepack = _prepack, enabled
    try:
        yield
    finally:
        _prepack = before


def set_packed_weights(model: nn.Module, enabled: bool) -> nn.Module:
    """Pack (the default) or not the weights of every ``Linear`` in ``model``, in place; turning it
    off also frees the packed copies made so far. Returns ``model``."""
    for module in model.modules():
        if isinstance(module, Linear):
            module.pack_weight = enabled
            if not enabled:
                module.__dict__.pop("_packed", None)
    return model


@contextlib.contextmanager
def without_onednn():
    """No oneDNN in this thread's products and convolutions (``linear``, ``model.conv.conv1d``)
    for the block; other threads keep it.

    What ``torch.backends.mkldnn.enabled = False`` does for the model's products and convolutions,
    bit for bit, but without switching a process-wide flag: the server computes finals on a
    second thread while its first runs the streams' windows, which must keep oneDNN (and give the
    same numbers whenever the other thread runs).
    """
    before = getattr(_this_thread, "off", False)
    _this_thread.off = True
    try:
        yield
    finally:
        _this_thread.off = before


def onednn_off_in_this_thread() -> bool:
    return getattr(_this_thread, "off", False)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` through oneDNN where it serves: x (..., in) @ weight (out, in).T + bias -> (..., out)."""
    if not _use_onednn(x, weight):
        return F.linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    if not (_AVAILABLE and _enabled and torch.backends.mkldnn.enabled) or onednn_off_in_this_thread():
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return False  # the oneDNN op has no backward
    return (x.device.type == "cpu" and x.dtype in _ONEDNN_DTYPES and x.dtype == weight.dtype
            and x.dim() >= 2 and x.numel() > 0)


class Linear(nn.Linear):
    """``nn.Linear`` whose inference forward on the CPU is oneDNN's linear primitive, on its weight
    packed once in oneDNN's layout.

    x: (..., in_features) -> (..., out_features).
    """

    # (what the weight was, its storage, its packed copy); holding the storage keeps its address
    # from being reused by a later weight, which could otherwise pass for the packed one.
    _packed: tuple[tuple, Any, torch.Tensor] | None = None
    pack_weight = True              # set_packed_weights(model, False): products read the plain weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pack_weight and _prepack and _PACK_AVAILABLE and x.numel() > x.shape[-1] and _use_onednn(x, self.weight):
            return torch.ops.mkldnn._linear_pointwise(x, self._packed_weight(), self.bias, "none", [], "")
        return linear(x, self.weight, self.bias)

    def _packed_weight(self) -> torch.Tensor:
        """The weight (out, in) in oneDNN's blocked layout, packed again whenever the weight has
        changed: another tensor or dtype (``.to``), or written in place (its version counter)."""
        weight = self.weight
        # Inference tensors (a model loaded inside inference_mode) keep no version counter and
        # cannot be written outside it.
        version = 0 if weight.is_inference() else weight._version
        key = (weight.data_ptr(), weight.dtype, version)
        packed = self._packed
        if packed is None or packed[0] != key:
            packed = (key, weight.untyped_storage(),
                      torch.ops.mkldnn._reorder_linear_weight(weight.detach(), _PACK_ROWS))
            self._packed = packed      # one assignment: a thread racing here packs the same weight
        return packed[2]

    def __getstate__(self) -> dict[str, Any]:
        # The packed copy is a cache in oneDNN's layout: not pickled, not deep-copied.
        state = super().__getstate__()
        state.pop("_packed", None)
        return state


def to_plain_linear(model: nn.Module) -> nn.Module:
    """Turn every ``Linear`` of ``model`` back into ``nn.Linear``, in place (same parameters).

    For code that matches module types exactly, like torch.ao's dynamic quantization.
    """
    for module in model.modules():
        if type(module) is Linear:
            module.__dict__.pop("_packed", None)
            module.__dict__.pop("pack_weight", None)
            module.__class__ = nn.Linear
    return model
