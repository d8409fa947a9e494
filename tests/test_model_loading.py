"""load_model: both weight formats, both weight-norm key styles, vocab, and every load-time error."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import BASE_STYLE, LARGE_STYLE, TINY, VOCAB, audio, max_diff
from model import CheckpointError, WavLMConfig, WavLMForCTC, WavLMModel, load_model
from model.loading import resolve_checkpoint


def _rewrite(directory, fn):
    """Apply fn to the state dict in model.safetensors."""
    f = directory / "model.safetensors"
    save_file(fn(load_file(str(f))), str(f))


@torch.inference_mode()
def test_safetensors_and_bin_give_the_same_model(checkpoint, tmp_path):
    hf, directory = checkpoint("WavLMForCTC", **BASE_STYLE)
    bin_dir = tmp_path / "bin"
    shutil.copytree(directory, bin_dir)
    torch.save(load_file(str(bin_dir / "model.safetensors")), bin_dir / "pytorch_model.bin")
    (bin_dir / "model.safetensors").unlink()
    x = audio(1, 1000)
    a, b = load_model(directory), load_model(bin_dir)
    assert torch.equal(a(x).logits, b(x).logits)
    assert max_diff(a(x).logits, hf(x).logits) <= 1e-4
    assert not a.training and isinstance(a.config, WavLMConfig)
    assert a.vocab == tuple(VOCAB)


@torch.inference_mode()
def test_weight_norm_keys_in_old_weight_g_weight_v_style(checkpoint):
    hf, directory = checkpoint("WavLMForCTC", **LARGE_STYLE)
    prefix = "wavlm.encoder.pos_conv_embed.conv."

    def to_old_style(sd):
        sd[prefix + "weight_g"] = sd.pop(prefix + "parametrizations.weight.original0")
        sd[prefix + "weight_v"] = sd.pop(prefix + "parametrizations.weight.original1")
        return sd

    _rewrite(directory, to_old_style)
    assert prefix + "weight_g" in load_file(str(directory / "model.safetensors"))
    x = audio(1, 1000)
    assert max_diff(load_model(directory)(x).logits, hf(x).logits) <= 1e-4


@torch.inference_mode()
def test_bare_backbone_checkpoint_and_dtype(checkpoint):
    hf, directory = checkpoint("WavLMModel", **BASE_STYLE)
    m = load_model(directory, dtype=torch.float64)
    assert isinstance(m, WavLMModel) and m.feature_projection.projection.weight.dtype == torch.float64
    x = audio(1, 1000)
    assert max_diff(m(x.double()).last_hidden_state.float(), hf(x).last_hidden_state) <= 1e-4


@torch.inference_mode()
def test_pretraining_quantizer_keys_are_ignored_with_a_note(checkpoint, caplog):
    hf, directory = checkpoint("WavLMModel", **BASE_STYLE)

    def add_quantizer(sd):
        sd["quantizer.codevectors"] = torch.randn(1, 640, 128)
        sd["quantizer.weight_proj.weight"] = torch.randn(640, 24)
        sd["quantizer.weight_proj.bias"] = torch.randn(640)
        sd["project_q.weight"] = torch.randn(256, 256)
        sd["project_q.bias"] = torch.randn(256)
        sd["project_hid.weight"] = torch.randn(256, 32)
        sd["project_hid.bias"] = torch.randn(256)
        return sd

    _rewrite(directory, add_quantizer)
    with caplog.at_level("WARNING", logger="model.loading"):
        m = load_model(directory)
    assert "ignored 7 training-only weights that inference does not use (project_hid, project_q, quantizer)" in caplog.text
    x = audio(1, 1000)
    assert max_diff(m(x).last_hidden_state, hf(x).last_hidden_state) <= 1e-4


def test_added_tokens_extend_the_vocabulary(checkpoint):
    _, directory = checkpoint("WavLMForCTC", vocab=VOCAB[:10], **BASE_STYLE)
    with pytest.raises(CheckpointError, match="10 tokens .* 12 outputs"):
        load_model(directory)
    (directory / "added_tokens.json").write_text(json.dumps({"<x>": 10, "<y>": 11}))
    assert load_model(directory).vocab[-2:] == ("<x>", "<y>")
    (directory / "added_tokens.json").write_text(json.dumps({"<x>": 9, "<y>": 11}))  # id 9 twice, 10 missing
    with pytest.raises(CheckpointError, match="token ids are not 0..11"):
        load_model(directory)


# ---- errors -------------------------------------------------------------------------------------
def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_model(tmp_path / "config.json")


def test_missing_config_weights_and_vocab(checkpoint):
    _, directory = checkpoint("WavLMForCTC", **BASE_STYLE)
    (directory / "vocab.json").unlink()
    with pytest.raises(FileNotFoundError, match="vocab.json is missing"):
        load_model(directory)
    (directory / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights file"):
        load_model(directory)
    (directory / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        load_model(directory)


def test_unknown_architecture(checkpoint):
    _, directory = checkpoint("WavLMForCTC", **BASE_STYLE)
    cfg = json.loads((directory / "config.json").read_text())
    cfg["architectures"] = ["WavLMForSomethingElse"]
    (directory / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unknown architecture 'WavLMForSomethingElse'"):
        load_model(directory)


def test_missing_and_unexpected_keys_are_named(checkpoint):
    _, directory = checkpoint("WavLMForCTC", **BASE_STYLE)

    def break_keys(sd):
        sd.pop("lm_head.bias")
        sd["wavlm.encoder.extra.weight"] = torch.zeros(3)
        return sd

    _rewrite(directory, break_keys)
    with pytest.raises(CheckpointError, match=r"missing keys: lm_head\.bias; unexpected keys: wavlm\.encoder\.extra"):
        load_model(directory)


def test_misshaped_key_names_both_shapes(checkpoint):
    _, directory = checkpoint("WavLMForCTC", **BASE_STYLE)
    _rewrite(directory, lambda sd: {**sd, "lm_head.weight": torch.zeros(12, 31)})
    with pytest.raises(CheckpointError, match=r"lm_head\.weight has shape \(12, 31\) .* but \(12, 32\)"):
        load_model(directory)


def test_vocab_size_mismatch(checkpoint):
    _, directory = checkpoint("WavLMForCTC", vocab=VOCAB + ["h"], **BASE_STYLE)
    with pytest.raises(CheckpointError, match="13 tokens but the CTC head .* 12 outputs"):
        load_model(directory)


def test_hub_id_offline_says_how_to_pass_a_local_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # empty cache
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(OSError, match=r"no local directory 'someone/no-such-wavlm'.*could not download.*pass the local directory") as err:
        resolve_checkpoint("someone/no-such-wavlm")
    message = str(err.value)
    assert "\n" not in message and "`hf download someone/no-such-wavlm --local-dir DIR`" in message
    assert message.endswith("(--model DIR, or load_model('DIR')).")


def test_input_errors(checkpoint):
    _, directory = checkpoint("WavLMForCTC", **BASE_STYLE)
    m = load_model(directory)
    need = m.config.receptive_field
    with pytest.raises(ValueError, match="rank 1"):
        m(torch.zeros(1000))
    with pytest.raises(ValueError, match="rank 3"):
        m(torch.zeros(1, 1, 1000))
    with pytest.raises(ValueError, match="floating point"):
        m(torch.zeros(1, 1000, dtype=torch.long))
    with pytest.raises(ValueError, match=f"audio too short: {need - 1} samples"):
        m(torch.zeros(1, need - 1))
    mask = torch.ones(2, 1000, dtype=torch.long)
    mask[1, need - 1 :] = 0
    with pytest.raises(ValueError, match="audio too short: a batch item"):
        m(torch.zeros(2, 1000), attention_mask=mask)
    assert m(torch.zeros(1, need)).logits.shape[1] == 1


def test_receptive_field_of_the_real_config_is_400_samples():
    cfg = WavLMConfig()
    assert cfg.receptive_field == 400 and cfg.inputs_to_logits_ratio == 320
    assert WavLMConfig(**{k: v for k, v in TINY.items()}).receptive_field == 40


def test_config_round_trips_through_transformers(checkpoint):
    import transformers

    _, directory = checkpoint("WavLMForCTC", **LARGE_STYLE)
    ours = WavLMConfig.from_json_file(directory / "config.json")
    assert ours.max_bucket_distance == 40 and ours.do_stable_layer_norm and ours.conv_kernel == (10, 3, 3)
    theirs = transformers.WavLMConfig.from_dict(ours.to_dict())
    for key, value in ours.to_dict().items():
        if key not in ours.extra:  # keys we do not interpret (dtype, transformers_version, ...) pass through
            got = getattr(theirs, key)
            if key == "id2label":
                got, value = {int(k): v for k, v in got.items()}, {int(k): v for k, v in value.items()}
            assert (list(got) if isinstance(got, tuple) else got) == value, key
    assert WavLMConfig.from_dict(theirs.to_dict()) == ours
    with pytest.raises(ValueError, match="feat_extract_norm"):
        WavLMConfig(feat_extract_norm="batch")
    with pytest.raises(ValueError, match="equal length"):
        WavLMConfig(conv_dim=(8, 8), conv_kernel=(3,), conv_stride=(1,))
    assert isinstance(WavLMForCTC(ours), WavLMForCTC)


@torch.inference_mode()
def test_masked_spec_embed_is_optional(checkpoint, caplog):
    """The training-only SpecAugment vector: a checkpoint may lack it, or carry it when the config asks for none."""
    hf, directory = checkpoint("WavLMForCTC", **BASE_STYLE)
    _rewrite(directory, lambda sd: {k: v for k, v in sd.items() if k != "wavlm.masked_spec_embed"})
    x = audio(1, 1000)
    assert max_diff(load_model(directory)(x).logits, hf(x).logits) <= 1e-4
    hf, directory = checkpoint("WavLMForCTC", seed=1, **BASE_STYLE)
    cfg = json.loads((directory / "config.json").read_text())
    cfg["mask_time_prob"] = 0.0
    (directory / "config.json").write_text(json.dumps(cfg))
    with caplog.at_level("WARNING", logger="model.loading"):
        m = load_model(directory)
    assert m.wavlm.masked_spec_embed is None and "weights that inference does not use (masked_spec_embed)" in caplog.text
    assert max_diff(m(x).logits, hf(x).logits) <= 1e-4
