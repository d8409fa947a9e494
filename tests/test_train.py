"""Smoke test of the training recipe: synthesise a few clips, train a tiny model, export, load, resume."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from train.voices import SourceVoice, synthesise

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                reason="espeak-ng is not installed (apt-get install espeak-ng)")

SENTENCES = ["the cat sat on the mat", "a dog ran in the park", "we like green apples",
             "she sells sea shells", "the sun is hot today", "open the red door"]
VOICES = [SourceVoice("es-a", "espeak", "en-us", 1.0, "espeak-ng-data"),
          SourceVoice("es-b", "espeak", "en+f3", 1.0, "espeak-ng-data")]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for split, voices in (("train", VOICES), ("dev", VOICES[:1])):
        with open(root / f"{split}.jsonl", "w") as f:
            for i, text in enumerate(SENTENCES if split == "train" else SENTENCES[:2]):
                v = voices[i % len(voices)]
                raw = root / "raw.wav"
                synthesise(v, text, str(raw))
                x, sr = sf.read(str(raw), dtype="float32")
                x = soxr.resample(x, sr, 16000).astype(np.float32)
                rel = f"{split}_{i}.flac"
                sf.write(root / rel, x, 16000)
                f.write(json.dumps({"path": rel, "text": text, "speaker": v.name, "voice": v.name,
                                    "duration": len(x) / 16000}) + "\n")
    return root


def test_train_tiny_decreases_loss_exports_and_resumes(data_dir, tmp_path):
    from model import WavLMForCTCWithSpeaker, load_model
    from train import train
    from train.export import VOCAB

    work, export_dir = tmp_path / "work", tmp_path / "export"
    common = ["--data", str(data_dir), "--work", str(work), "--export-dir", str(export_dir), "--size", "tiny",
              "--threads", "1", "--lr", "3e-3", "--warmup", "5", "--batch-seconds", "8", "--log-every", "10",
              "--eval-every", "1000", "--export-every", "1000",
              "--curriculum-steps", "10", "--curriculum-voices", "es-a", "--curriculum-max-seconds", "30"]
    first = train.main(common + ["--max-steps", "40", "--fresh"])
    losses = first["losses"]
    assert len(losses) == 40 and all(np.isfinite(losses))
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8]), losses
    log_text = (work / "log.txt").read_text()
    assert "curriculum: 3 clips" in log_text and "curriculum done at step 10: all 6 clips" in log_text

    m = load_model(export_dir)
    assert isinstance(m, WavLMForCTCWithSpeaker)
    assert tuple(m.vocab) == VOCAB and m.config.pad_token_id == 0 and m.config.architectures == ("WavLMForCTC",)
    assert m.config.speaker_head["num_speakers"] == 2
    out = m(torch.zeros(1, 16000))
    assert out.logits.shape == (1, 49, len(VOCAB)) and out.embeddings.shape == (1, 16)
    # The export is also a transformers WavLMForCTC checkpoint (the speaker head is ignored there).
    transformers = pytest.importorskip("transformers")
    hf = transformers.WavLMForCTC.from_pretrained(export_dir).eval()
    x = torch.randn(1, 8000) * 0.1
    with torch.no_grad():
        assert torch.allclose(hf(x).logits, m(x).logits, atol=1e-4)

    # A second run resumes from last.pt: the global step carries on. It runs every clip speed-perturbed (so
    # no speaker labels) and every batch stream-like; the checkpoint keeps its parameter names.
    keys = set(torch.load(work / "last.pt", weights_only=False)["model"])
    # It also turns dropout and channel masking on: they change no parameter, the checkpoint's config keeps them.
    second = train.main(common + ["--max-steps", "3", "--speed-prob", "1", "--eq-prob", "0.5",
                                  "--streaming-prob", "1", "--dropout", "0.1", "--mask-feature-prob", "0.2"])
    assert second["step"] == 43 and all(np.isfinite(second["losses"]))
    resumed = torch.load(work / "last.pt", weights_only=False)
    assert set(resumed["model"]) == keys
    assert resumed["config"]["hidden_dropout"] == 0.1 and resumed["config"]["mask_feature_prob"] == 0.2
    assert resumed["config"]["mask_time_prob"] == 0.05   # not given: kept
    assert "dropout 0.1, SpecAugment time 0.05 / channels 0.2" in (work / "log.txt").read_text()

    # A new work directory started from the export (--init): its weights, so the loss starts where the
    # first run ended; the curriculum and the speaker-loss ramp are skipped, and a resume remembers that.
    # Its data holds a clip of a speaker the export's head does not know (a voice added later): it trains
    # CTC only, instead of being dropped.
    init_work = tmp_path / "from_export"
    more_data = shutil.copytree(data_dir, tmp_path / "more_data")
    with open(more_data / "train.jsonl", "a") as f:
        clip = json.loads((data_dir / "train.jsonl").read_text().splitlines()[0])
        f.write(json.dumps(dict(clip, speaker="es-new", voice="es-new")) + "\n")
    init_common = [str(init_work) if a == str(work) else str(more_data) if a == str(data_dir) else a
                   for a in common]
    third = train.main(init_common + ["--max-steps", "4", "--init", str(export_dir), "--lr", "1e-9"])
    assert third["step"] == 4
    assert np.mean(third["losses"]) < 0.8 * np.mean(losses[:4]), (third["losses"], losses[:4])
    init_log = (init_work / "log.txt").read_text()
    assert f"(from {export_dir})" in init_log and "curriculum" not in init_log
    assert "7 train clips" in init_log and "2 speakers; 1 clips of other speakers, CTC only" in init_log
    assert torch.load(init_work / "last.pt", weights_only=False)["past_ramps"] is True
    with pytest.raises(SystemExit, match="not a model with a speaker head"):
        train.main(init_common + ["--max-steps", "1", "--fresh", "--init", str(plain_ctc_checkpoint(tmp_path))])

    # --frozen-layers with --speaker-weight 0: only the layers above N and the CTC head move (the speaker
    # head and the detector too are left alone); a resume with other parameters fixed is refused by name.
    frozen_work = tmp_path / "frozen"
    frozen_common = [str(frozen_work) if a == str(work) else a for a in common]
    train.main(frozen_common + ["--max-steps", "3", "--init", str(export_dir), "--frozen-layers", "1",
                                "--speaker-weight", "0", "--export-every", "-1"])
    before = load_model(export_dir).state_dict()
    frozen_last = torch.load(frozen_work / "last.pt", weights_only=False)
    after = frozen_last["model"]
    n_layers = len(m.wavlm.encoder.layers)
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved, "nothing trained"
    assert all(k.startswith(("lm_head.", "wavlm.encoder.layer_norm.")) or
               any(k.startswith(f"wavlm.encoder.layers.{i}.") for i in range(1, n_layers)) for k in moved), moved
    assert any(k.startswith("lm_head.") for k in moved)
    # last.pt names what the run trains (what a resume is checked against): the same set.
    assert "lm_head.weight" in frozen_last["trainable"]
    assert not any(k.startswith(("speaker_head.", "wavlm.feature_extractor.", "wavlm.encoder.layers.0."))
                   for k in frozen_last["trainable"])
    with pytest.raises(SystemExit, match="other parameters fixed"):
        train.main(frozen_common + ["--max-steps", "1"])
    with pytest.raises(SystemExit, match="has 2 transformer layers, got 3"):
        train.main(frozen_common + ["--max-steps", "1", "--fresh", "--frozen-layers", "3"])

    # --add-layers: identity layers on top of the export, so the first loss is the export's; only the layers
    # above --frozen-layers (the new one among them) train, and the checkpoint has the bigger config.
    grow_common = ["--max-steps", "2", "--init", str(export_dir), "--speaker-weight", "0", "--export-every", "-1",
                   "--lr", "1e-9", "--frozen-layers", "2"]
    plain = train.main([str(tmp_path / "plain") if a == str(work) else a for a in common] + grow_common)
    grow_work = tmp_path / "grown"
    grow_args = [str(grow_work) if a == str(work) else a for a in common] + grow_common
    grown = train.main(grow_args + ["--add-layers", "1"])
    assert grown["losses"][0] == pytest.approx(plain["losses"][0], rel=1e-5)
    grown_last = torch.load(grow_work / "last.pt", weights_only=False)
    assert grown_last["config"]["num_hidden_layers"] == n_layers + 1
    assert any(k.startswith(f"wavlm.encoder.layers.{n_layers}.") for k in grown_last["trainable"])
    assert "1 identity layers added on top" in (grow_work / "log.txt").read_text()
    with pytest.raises(SystemExit, match="--add-layers grows an exported model"):
        train.main(common + ["--max-steps", "1", "--fresh", "--add-layers", "1"])
    with pytest.raises(SystemExit, match="--add-layers -1: count must be at least 1"):
        train.main(grow_args + ["--fresh", "--add-layers", "-1"])

    # --anchor-speaker-features: the whole backbone trains, held near the --init model's speaker features;
    # the speaker head stays fixed, and the anchor's distance is logged.
    anchor_work = tmp_path / "anchored"
    anchor_common = [str(anchor_work) if a == str(work) else a for a in common] + [
        "--max-steps", "3", "--log-every", "1", "--speaker-weight", "0", "--anchor-speaker-features", "10",
        "--export-every", "-1", "--streaming-prob", "0.5"]
    train.main(anchor_common + ["--init", str(export_dir)])
    anchored = torch.load(anchor_work / "last.pt", weights_only=False)
    moved = {k for k in before if not torch.equal(before[k], anchored["model"][k])}
    assert any(k.startswith("wavlm.feature_extractor.") for k in moved)
    assert not any(k.startswith("speaker_head.") for k in moved)
    assert " anchor " in (anchor_work / "log.txt").read_text()
    with pytest.raises(SystemExit, match="give --init MODEL_DIR"):
        train.main(anchor_common)
    other_teacher = shutil.copytree(export_dir, tmp_path / "other_export")
    with pytest.raises(SystemExit, match="was anchored to .*export, not .*other_export"):
        train.main(anchor_common + ["--init", str(other_teacher)])
    with pytest.raises(SystemExit, match="give --init MODEL_DIR"):
        train.main(anchor_common + ["--init", str(export_dir), "--speaker-weight", "0.2"])


def test_regularization_flags_are_checked_and_keep_the_masked_frame_vector():
    from model import WavLMConfig
    from train import train

    config = train.build_config("tiny", ["a", "b"])
    assert train.with_regularization(config, train.parse_args([]), from_weights=True) is config
    changed = train.with_regularization(config, train.parse_args(["--dropout", "0.2", "--mask-time-prob", "0.1"]),
                                        from_weights=True)
    assert isinstance(changed, WavLMConfig)
    assert (changed.hidden_dropout, changed.activation_dropout, changed.attention_dropout,
            changed.final_dropout, changed.mask_time_prob) == (0.2, 0.2, 0.2, 0.2, 0.1)
    assert config.hidden_dropout == 0.0   # the given config is left alone
    with pytest.raises(SystemExit, match="--dropout must be in"):
        train.with_regularization(config, train.parse_args(["--dropout", "1"]), from_weights=False)
    with pytest.raises(SystemExit, match="--mask-feature-length must be 1..32"):
        train.with_regularization(config, train.parse_args(["--mask-feature-length", "33"]), from_weights=False)
    # No masking at all: a fresh model simply has no masked-frame vector; weights that carry one refuse.
    unmasked = train.with_regularization(config, train.parse_args(["--mask-time-prob", "0"]), from_weights=False)
    assert unmasked.mask_time_prob == 0.0
    with pytest.raises(SystemExit, match="would drop the model's masked-frame vector"):
        train.with_regularization(config, train.parse_args(["--mask-time-prob", "0"]), from_weights=True)


def test_batches_loaded_ahead_on_threads_train_exactly_as_loaded_in_the_step(data_dir, tmp_path):
    from train import train

    def losses(loader_threads: int) -> list[float]:
        work = tmp_path / f"work{loader_threads}"
        return train.main(["--data", str(data_dir), "--work", str(work), "--export-dir", str(work / "export"),
                           "--size", "tiny", "--threads", "1", "--batch-seconds", "8", "--eval-every", "1000",
                           "--export-every", "-1", "--curriculum-steps", "0", "--max-steps", "4", "--fresh",
                           "--noise-prob", "0.5", "--eq-prob", "0.5", "--speed-prob", "0.5",
                           "--loader-threads", str(loader_threads)])["losses"]

    assert losses(2) == losses(0)


def plain_ctc_checkpoint(tmp_path):
    from tests.checkpoints import write_ctc_checkpoint

    return write_ctc_checkpoint(tmp_path / "plain_ctc")


def test_front_end_variation_is_zero_for_a_collapsed_front_end_only():
    from model import WavLMForCTCWithSpeaker
    from train.train import build_config, front_end_variation

    torch.manual_seed(0)
    model = WavLMForCTCWithSpeaker(build_config("tiny", ["a", "b"]))
    audio, mask = torch.randn(2, 16000) * 0.1, torch.ones(2, 16000, dtype=torch.long)
    assert front_end_variation(model, audio, mask) > 0.01
    with torch.no_grad():  # a last conv layer that ignores its input: constant output
        last = model.wavlm.feature_extractor.conv_layers[-1].conv
        last.weight.zero_()
        last.bias = torch.nn.Parameter(torch.ones(last.out_channels))
    assert front_end_variation(model, audio, mask) < 1e-6
