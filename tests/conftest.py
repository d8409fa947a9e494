"""Shared test setup: one thread (the machine is shared), tiny random transformers WavLM checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

# Tiny dims: 3 conv layers (receptive field 40 samples, stride 20), 2 transformer layers. Few buckets and a
# short max_bucket_distance so that test lengths (~100 frames) reach the log-spaced and clamped buckets.
TINY = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
    conv_dim=(16, 24, 24), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2),
    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
    num_buckets=32, max_bucket_distance=40, vocab_size=12,
    classifier_proj_size=16, tdnn_dim=(16, 16, 20), tdnn_kernel=(3, 3, 1), tdnn_dilation=(1, 2, 1),
    xvector_output_dim=12,
)
BASE_STYLE = dict(TINY, feat_extract_norm="group", do_stable_layer_norm=False)
LARGE_STYLE = dict(TINY, feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
                   num_conv_pos_embeddings=15)
VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", "a", "b", "c", "d", "e", "f", "g"]


def hf_model(cls_name: str, seed: int = 0, **config):
    """A transformers WavLM model with seeded random weights, every parameter perturbed (so LayerNorm
    weights, gates and weight-norm gains are not at their identity init), in eval mode."""
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(transformers.WavLMConfig(**config))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def save_hf(model, directory: Path, vocab: list[str] | None = None) -> Path:
    """save_pretrained into directory (+ vocab.json for CTC); returns directory."""
    model.save_pretrained(directory)
    if vocab is not None:
        (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    return directory


def audio(batch: int = 2, samples: int = 2000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, samples, generator=g)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.fixture
def ctrl_c_raises():
    """Ctrl-C (SIGINT) raises KeyboardInterrupt during the test, as in an interactive run, even when
    pytest was started with SIGINT ignored (as `cmd &` in a script starts it); a process the test
    starts then gets the default disposition too (an ignored signal stays ignored across exec, a
    handled one is reset)."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def checkpoint(tmp_path):
    """Factory: checkpoint(cls_name, **config) -> (hf_model, directory)."""
    def make(cls_name: str, seed: int = 0, vocab: list[str] | None = None, **config):
        model = hf_model(cls_name, seed, **config)
        directory = tmp_path / f"{cls_name}-{seed}"
        if vocab is None and cls_name == "WavLMForCTC":
            vocab = VOCAB[: config.get("vocab_size", 12)]
        return model, save_hf(model, directory, vocab)
    return make


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    """A small random-weight CTC pipeline (no speakers, greedy) for the server tests, one per module."""
    from checkpoints import write_ctc_checkpoint
    from stream.pipeline import Pipeline

    path = write_ctc_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", seed=3)
    return Pipeline.from_pretrained(path, speakers=False, beam=False, chunk_ms=320, left_ms=640, right_ms=160)
