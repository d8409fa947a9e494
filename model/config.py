"""WavLM hyper-parameters, read from a Hugging Face ``config.json``.

Field names are exactly those of ``transformers.WavLMConfig`` so a checkpoint's
config maps 1:1.  Keys we do not use are kept in ``extra`` so ``to_dict()``
round-trips whatever the file held.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

_TUPLE_FIELDS = ("conv_dim", "conv_stride", "conv_kernel", "tdnn_dim", "tdnn_kernel", "tdnn_dilation", "architectures")


@dataclass(frozen=True)
class WavLMConfig:
    # transformer
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    do_stable_layer_norm: bool = False  # True: pre-LN layers ("large"); False: post-LN ("base")
    # dropout (training only; eval mode ignores them)
    hidden_dropout: float = 0.1
    activation_dropout: float = 0.1
    attention_dropout: float = 0.1
    feat_proj_dropout: float = 0.0
    final_dropout: float = 0.1
    layerdrop: float = 0.1
    initializer_range: float = 0.02
    # convolutional feature encoder
    feat_extract_norm: str = "group"  # "group": GroupNorm on layer 0 only; "layer": LayerNorm on every layer
    feat_extract_activation: str = "gelu"
    conv_dim: tuple[int, ...] = (512, 512, 512, 512, 512, 512, 512)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_bias: bool = False
    # positional convolution
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    # gated relative position bias
    num_buckets: int = 320
    max_bucket_distance: int = 800  # 800 in transformers, 1280 in the original code: always read it from the file
    # SpecAugment (fine-tuning)
    apply_spec_augment: bool = True
    mask_time_prob: float = 0.05
    mask_time_length: int = 10
    mask_time_min_masks: int = 2
    mask_feature_prob: float = 0.0
    mask_feature_length: int = 10
    mask_feature_min_masks: int = 0
    # pre-training quantizer (its weights are ignored when loading)
    num_codevectors_per_group: int = 320
    num_codevector_groups: int = 2
    codevector_dim: int = 256
    proj_codevector_dim: int = 256
    # CTC
    vocab_size: int | None = 32
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    ctc_loss_reduction: str = "mean"
    ctc_zero_infinity: bool = False
    # classification / x-vector heads
    use_weighted_layer_sum: bool = False
    classifier_proj_size: int = 256
    tdnn_dim: tuple[int, ...] = (512, 512, 512, 512, 1500)
    tdnn_kernel: tuple[int, ...] = (5, 3, 3, 1, 1)
    tdnn_dilation: tuple[int, ...] = (1, 2, 3, 1, 1)
    xvector_output_dim: int = 512
    id2label: dict[int, str] = field(default_factory=lambda: {0: "LABEL_0", 1: "LABEL_1"})
    # adapter
    add_adapter: bool = False
    adapter_kernel_size: int = 3
    adapter_stride: int = 2
    num_adapter_layers: int = 3
    output_hidden_size: int | None = None  # None: hidden_size
    architectures: tuple[str, ...] | None = None
    # bundled model only: {"embedding_dim": E, "num_speakers": N, "proj_dim": P, ...}
    speaker_head: dict[str, Any] | None = None
    # keys of config.json that this package does not use, kept for round trips
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in _TUPLE_FIELDS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        if self.output_hidden_size is None:
            object.__setattr__(self, "output_hidden_size", self.hidden_size)
        self._validate()

    def _validate(self) -> None:
        if not (len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride)) or not self.conv_dim:
            raise ValueError(
                "config: conv_dim, conv_kernel and conv_stride must be non-empty and of equal length, got "
                f"{len(self.conv_dim)}, {len(self.conv_kernel)}, {len(self.conv_stride)}"
            )
        if self.feat_extract_norm not in ("group", "layer"):
            raise ValueError(f"config: feat_extract_norm must be 'group' or 'layer', got {self.feat_extract_norm!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"config: hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}"
            )
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            raise ValueError(
                f"config: hidden_size {self.hidden_size} is not divisible by num_conv_pos_embedding_groups "
                f"{self.num_conv_pos_embedding_groups}"
            )
        if not (len(self.tdnn_dim) == len(self.tdnn_kernel) == len(self.tdnn_dilation)):
            raise ValueError("config: tdnn_dim, tdnn_kernel and tdnn_dilation must have equal length")

    # ---- derived values -------------------------------------------------------------
    @property
    def num_feat_extract_layers(self) -> int:
        return len(self.conv_dim)

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def inputs_to_logits_ratio(self) -> int:
        """Samples per output frame of the conv encoder (320 for WavLM)."""
        return math.prod(self.conv_stride)

    @property
    def receptive_field(self) -> int:
        """Samples that one frame of the conv encoder sees (400 for WavLM): the shortest valid input."""
        field_, jump = 1, 1
        for kernel, stride in zip(self.conv_kernel, self.conv_stride):
            field_ += (kernel - 1) * jump
            jump *= stride
        return field_

    # ---- (de)serialisation --------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "WavLMConfig":
        """Build from a ``config.json`` dict (transformers layout). Unknown keys go to ``extra``."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names and k not in ("num_labels", "label2id")}
        if "id2label" in kwargs and kwargs["id2label"] is not None:
            kwargs["id2label"] = {int(k): str(v) for k, v in kwargs["id2label"].items()}
        elif "num_labels" in d:
            kwargs["id2label"] = {i: f"LABEL_{i}" for i in range(int(d["num_labels"]))}
        if isinstance(kwargs.get("eos_token_id"), list):  # transformers allows a list; we only ever read one
            extra["eos_token_id"] = kwargs.pop("eos_token_id")
        extra.pop("num_feat_extract_layers", None)  # derived from conv_dim
        return cls(**kwargs, extra=extra)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "WavLMConfig":
        with open(path, encoding="utf-8") as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(d).__name__}")
        return cls.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        """A ``config.json`` dict that ``transformers.WavLMConfig.from_dict`` accepts."""
        d: dict[str, Any] = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            if f.name == "id2label":
                d["label2id"] = {v: k for k, v in value.items()}
                value = {str(k): v for k, v in value.items()}
            if f.name == "speaker_head" and value is None:
                continue
            d[f.name] = value
        d["model_type"] = "wavlm"
        d["num_feat_extract_layers"] = self.num_feat_extract_layers
        return d

    def to_json_file(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")

    def replace(self, **changes: Any) -> "WavLMConfig":
        return dataclasses.replace(self, **changes)
