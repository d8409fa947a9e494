"""Build a model from a Hugging Face checkpoint directory (or hub id) and load its weights strictly."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch
import torch.nn as nn

from .config import WavLMConfig
from .heads import (WavLMForAudioFrameClassification, WavLMForCTC, WavLMForCTCWithSpeaker,
                    WavLMForSequenceClassification, WavLMForXVector)
from .wavlm import WavLMModel

logger = logging.getLogger(__name__)

# The bundled default checkpoint (config.json, model.safetensors, vocab.json), exported by train/.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default"

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "WavLMModel": WavLMModel,
    "WavLMForCTC": WavLMForCTC,
    "WavLMForSequenceClassification": WavLMForSequenceClassification,
    "WavLMForAudioFrameClassification": WavLMForAudioFrameClassification,
    "WavLMForXVector": WavLMForXVector,
    "WavLMForCTCWithSpeaker": WavLMForCTCWithSpeaker,
}

# Pre-training-only weights (Gumbel quantizer and contrastive projections): no inference path reads them.
_PRETRAINING_PREFIXES = ("quantizer.", "project_q.", "project_hid.")
# Key renames: torch.nn.utils.parametrizations.weight_norm names -> our weight_g / weight_v.
_RENAMES = ((re.compile(r"\.parametrizations\.weight\.original0$"), ".weight_g"),
            (re.compile(r"\.parametrizations\.weight\.original1$"), ".weight_v"))
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the model its config describes."""


def build_model(config: WavLMConfig) -> nn.Module:
    """The (randomly initialised) module for config.architectures (WavLMForCTCWithSpeaker if speaker_head is set)."""
    arch = config.architectures[0] if config.architectures else "WavLMModel"
    if config.speaker_head and arch == "WavLMForCTC":
        arch = "WavLMForCTCWithSpeaker"
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"unknown architecture {arch!r} in config.json; supported: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](config)


def _looks_like_hub_id(s: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", s)) and not s.startswith((".", "/"))


def resolve_checkpoint(path_or_hub_id: str | os.PathLike) -> Path:
    """A local directory as is; an 'owner/name' hub id downloaded (or found in the local cache)."""
    path = Path(path_or_hub_id).expanduser()
    if path.is_dir():
        return path
    s = str(path_or_hub_id)
    if path.exists():
        raise FileNotFoundError(f"{s}: not a directory; pass the checkpoint directory that holds config.json")
    if not _looks_like_hub_id(s):
        raise FileNotFoundError(f"checkpoint directory {s} does not exist")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - a declared dependency
        raise FileNotFoundError(f"{s}: no such directory, and huggingface_hub is not installed to download it") from None
    patterns = ["config.json", "vocab.json", "added_tokens.json", *_WEIGHT_FILES, "model-*.safetensors",
                "pytorch_model-*.bin"]
    try:
        return Path(snapshot_download(s, allow_patterns=patterns))
    except Exception as first:  # noqa: BLE001 - any network/hub failure gets the same advice
        try:
            return Path(snapshot_download(s, allow_patterns=patterns, local_files_only=True))
        except Exception:  # noqa: BLE001
            pass
        reason = (str(first).strip().splitlines() or [""])[0]    # the hub's messages run to several lines
        raise OSError(
            f"no local directory {s!r}, and could not download it from the Hugging Face Hub, nor find it in the "
            f"local cache (offline, HF_HUB_OFFLINE set, or no such repository; {type(first).__name__}: {reason}). "
            f"Download it where the network is available (`hf download {s} --local-dir DIR`), copy DIR here and "
            f"pass the local directory instead (--model DIR, or load_model('DIR'))."
        ) from None


def read_state_dict(directory: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """Tensors of model.safetensors (preferred) or pytorch_model.bin, sharded or not, and the file read."""
    for name in _WEIGHT_FILES:
        f = directory / name
        if not f.is_file():
            continue
        if name.endswith(".index.json"):
            with open(f, encoding="utf-8") as fh:
                shards = sorted(set(json.load(fh)["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(_read_file(directory / shard))
            return state, f
        return _read_file(f), f
    raise FileNotFoundError(f"{directory}: no weights file (looked for {', '.join(_WEIGHT_FILES)})")


def _read_file(f: Path) -> dict[str, torch.Tensor]:
    if not f.is_file():
        raise FileNotFoundError(f"weights shard {f} is missing")
    if f.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(f))
    state = torch.load(f, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise CheckpointError(f"{f}: expected a state dict, got {type(state).__name__}")
    return state


def read_vocab(directory: Path) -> tuple[str, ...]:
    """Tokens in id order from vocab.json (+ added_tokens.json), Wav2Vec2CTCTokenizer layout."""
    f = directory / "vocab.json"
    if not f.is_file():
        raise FileNotFoundError(f"{directory}: vocab.json is missing (a CTC checkpoint needs its token list)")
    with open(f, encoding="utf-8") as fh:
        vocab = json.load(fh)
    if not isinstance(vocab, dict) or not vocab or not all(isinstance(v, int) for v in vocab.values()):
        raise CheckpointError(f"{f}: expected a JSON object token -> id (multi-language vocabularies are not supported)")
    added = directory / "added_tokens.json"
    if added.is_file():
        with open(added, encoding="utf-8") as fh:
            vocab = {**vocab, **json.load(fh)}
    by_id = {i: t for t, i in vocab.items()}
    if len(by_id) != len(vocab) or sorted(by_id) != list(range(len(by_id))):
        raise CheckpointError(f"{f}: the {len(vocab)} token ids are not 0..{len(vocab) - 1} without gaps or duplicates")
    return tuple(by_id[i] for i in range(len(by_id)))


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> list[str]:
    """Copy a transformers-style state dict into model, strictly; return the ignored pre-training keys.

    Renames weight-norm keys, adds or strips the 'wavlm.' prefix (backbone <-> head checkpoints), tolerates a
    missing masked_spec_embed (fine-tuning only) and ignores quantizer/project_q/project_hid keys. Anything
    else missing, unexpected or misshaped raises CheckpointError naming the key (and both shapes).
    """
    renamed = {}
    for k, v in state.items():
        for pattern, new in _RENAMES:
            k = pattern.sub(new, k)
        renamed[k] = v
    own = model.state_dict()
    is_head = not isinstance(model, WavLMModel)
    if is_head and not any(k.startswith("wavlm.") for k in renamed):
        # a bare-backbone checkpoint (e.g. microsoft/wavlm-large) loaded under a head: its keys lack the prefix
        renamed = {(f"wavlm.{k}" if _is_backbone_key(k) else k): v for k, v in renamed.items()}
    if not is_head and any(k.startswith("wavlm.") for k in renamed):
        renamed = {k[len("wavlm."):] if k.startswith("wavlm.") else k: v for k, v in renamed.items()}

    ignored = sorted(k for k in renamed if k.removeprefix("wavlm.").startswith(_PRETRAINING_PREFIXES) and k not in own)
    for k in ignored:
        del renamed[k]
    masked_key = "wavlm.masked_spec_embed" if is_head else "masked_spec_embed"
    if masked_key in renamed and masked_key not in own:
        ignored.append(masked_key)  # training-only vector the config does not ask for
        del renamed[masked_key]

    missing = sorted(set(own) - set(renamed) - {masked_key})
    unexpected = sorted(set(renamed) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_first(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_first(unexpected)}")
        raise CheckpointError(f"{source} does not match {type(model).__name__}: " + "; ".join(parts))
    for k, v in renamed.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(
                f"{source}: key {k} has shape {tuple(v.shape)} in the checkpoint but {tuple(own[k].shape)} in the "
                f"model built from config.json"
            )
    model.load_state_dict(renamed, strict=False)  # strictness checked above (masked_spec_embed may stay initialised)
    if ignored:
        logger.warning("%s: ignored %d training-only weights that inference does not use (%s)", source, len(ignored),
                       ", ".join(sorted({k.removeprefix("wavlm.").split(".")[0] for k in ignored})))
    return ignored


def _first(keys: list[str], n: int = 20) -> str:
    return ", ".join(keys[:n]) + (f" ... and {len(keys) - n} more" if len(keys) > n else "")


def _is_backbone_key(k: str) -> bool:
    return k.split(".")[0] in ("feature_extractor", "feature_projection", "encoder", "adapter", "masked_spec_embed",
                               *(p.rstrip(".") for p in _PRETRAINING_PREFIXES))


def save_model(model: nn.Module, directory: str | os.PathLike, vocab: list[str] | tuple[str, ...] | None = None) -> Path:
    """Write model as a Hugging Face checkpoint directory: config.json, model.safetensors, vocab.json (CTC).

    Weight-norm keys are written as transformers 5 writes them (parametrizations.weight.original0/1), so
    transformers loads the files too; a WavLMForCTCWithSpeaker is saved with architectures ["WavLMForCTC"]
    plus config.speaker_head (transformers then reads the CTC part and ignores speaker_head.* weights).
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arch = type(model).__name__
    if arch == "WavLMForCTCWithSpeaker":
        arch = "WavLMForCTC"
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"save_model: unsupported module type {type(model).__name__}")
    config: WavLMConfig = model.config
    config.replace(architectures=(arch,)).to_json_file(directory / "config.json")
    state = {}
    for k, v in model.state_dict().items():
        k = re.sub(r"\.weight_g$", ".parametrizations.weight.original0", k) if "pos_conv_embed" in k else k
        k = re.sub(r"\.weight_v$", ".parametrizations.weight.original1", k) if "pos_conv_embed" in k else k
        state[k] = v.detach().to("cpu").contiguous()
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    vocab = vocab if vocab is not None else getattr(model, "vocab", None)
    if isinstance(model, WavLMForCTC):
        if vocab is None:
            raise ValueError("save_model: a CTC model needs its vocabulary (pass vocab= or set model.vocab)")
        if len(vocab) != config.vocab_size:
            raise ValueError(f"save_model: {len(vocab)} tokens for a CTC head of {config.vocab_size} outputs")
        with open(directory / "vocab.json", "w", encoding="utf-8") as f:
            json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False, indent=1)
    return directory


def load_model(path_or_hub_id: str | os.PathLike, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> nn.Module:
    """Load a WavLM checkpoint in the Hugging Face layout into the head its config names, in eval mode.

    path_or_hub_id: a directory with config.json, model.safetensors or pytorch_model.bin, and vocab.json for
    CTC; or a hub id 'owner/name' (downloaded with huggingface_hub when the network allows).
    The module has `.config` (WavLMConfig); CTC models also `.vocab` (tokens in id order).
    """
    directory = resolve_checkpoint(path_or_hub_id)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{directory}: config.json is missing")
    config = WavLMConfig.from_json_file(config_file)
    model = build_model(config)
    state, weights_file = read_state_dict(directory)
    load_state(model, state, source=str(weights_file))
    if isinstance(model, WavLMForCTC):
        vocab = read_vocab(directory)
        if len(vocab) != config.vocab_size:
            raise CheckpointError(
                f"{directory / 'vocab.json'} has {len(vocab)} tokens but the CTC head (config.vocab_size, lm_head) "
                f"has {config.vocab_size} outputs"
            )
        model.vocab = vocab
    return model.to(device=device, dtype=dtype).eval()
