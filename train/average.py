"""Average the weights of several exports of one model (a "model soup").

Runs that start from the same export and train on for a while (other seeds, other parts of
the backbone trained, other losses) end in nearby points of weight space; their average is
often better than each of them, at no cost at inference. Every floating-point weight is
averaged, the speaker head included, except the speaker-change detector: it is trained on the
exported model's own speaker features (train/change_detector.py), so the average carries the
first export's detector, to be trained again (or checked with bench/speaker_eval.py).

The exports must share one architecture (same config apart from training-only fields such as
dropout, and the same weight names and shapes); the first one's config is written.

Usage: python -m train.average DIR DIR [DIR ...] --out DIR
       python -m train.change_detector --model DIR   # then a detector for the average
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from train.export import export

# Config fields that only change training (inference and the weights' shapes ignore them).
TRAINING_ONLY_FIELDS = frozenset({
    "activation_dropout", "attention_dropout", "feat_proj_dropout", "final_dropout", "hidden_dropout",
    "layerdrop", "mask_time_prob", "mask_time_length", "mask_feature_prob", "mask_feature_length",
})
DETECTOR_PREFIX = "speaker_head.change_detector."


def read_export(directory: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json as a dict, the weights) of an exported model directory."""
    for name in ("config.json", "model.safetensors"):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} is not an exported model: no {name}")
    with open(directory / "config.json") as f:
        config = json.load(f)
    return config, load_file(str(directory / "model.safetensors"))


def _architecture(config: dict) -> dict:
    """The config without its training-only fields, and without the speaker head's detector
    block (its spec may differ between exports: the average carries the first one's)."""
    arch = {k: v for k, v in config.items() if k not in TRAINING_ONLY_FIELDS}
    if isinstance(arch.get("speaker_head"), dict):
        arch["speaker_head"] = {k: v for k, v in arch["speaker_head"].items() if k != "change_detector"}
    return arch


def average_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The mean of each floating-point weight; the first export's detector (if it has one; the
    others' are ignored, as a fresh train.export has none) and non-float buffers.

    Raises ValueError when the weights' names or shapes differ.
    """
    weights = [{k: v for k, v in state.items() if not k.startswith(DETECTOR_PREFIX)} for state in states]
    first = weights[0]
    for i, state in enumerate(weights[1:], start=2):
        if state.keys() != first.keys():
            differing = sorted(first.keys() ^ state.keys())[:3]
            raise ValueError(f"export {i} has other weights than export 1 (e.g. {differing})")
        for name, tensor in first.items():
            if state[name].shape != tensor.shape:
                raise ValueError(f"export {i}: {name} is {tuple(state[name].shape)}, "
                                 f"export 1 has {tuple(tensor.shape)}")
    averaged = {k: v.clone() for k, v in states[0].items() if k.startswith(DETECTOR_PREFIX)}
    for name, tensor in first.items():
        if not tensor.is_floating_point():
            averaged[name] = tensor.clone()
        else:
            # Sum in float64 so the mean does not depend on the order of the exports.
            total = sum(state[name].to(torch.float64) for state in weights)
            averaged[name] = (total / len(weights)).to(tensor.dtype)
    return averaged


def average_exports(directories: list[Path], out: Path) -> Path:
    """Write the average of ``directories`` (at least two exports) to ``out``."""
    if len(directories) < 2:
        raise ValueError("averaging needs at least two exports")
    exports = [read_export(d) for d in directories]
    reference = _architecture(exports[0][0])
    for directory, (config, _) in zip(directories[1:], exports[1:]):
        architecture = _architecture(config)
        if architecture != reference:
            differing = sorted(k for k in reference.keys() | architecture.keys()
                               if reference.get(k) != architecture.get(k))
            raise ValueError(f"{directory} is another architecture than {directories[0]} "
                             f"(config differs in {', '.join(differing)})")
    return export(average_states([state for _, state in exports]), exports[0][0], out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("exports", nargs="+", type=Path, help="exported model directories")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        out = average_exports(args.exports, args.out)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"train.average: {err}")
    print(f"averaged {len(args.exports)} exports -> {out}; the change detector is the first export's: "
          f"train a new one (python -m train.change_detector --model {out})")


if __name__ == "__main__":
    main()
