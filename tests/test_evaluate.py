"""train.evaluate's language-model measurement (--kenlm) on the bundled model and the bundled examples."""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from train import evaluate
from train.data import Clip

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
HAVE_KENLM = importlib.util.find_spec("kenlm") is not None


def example_clips() -> list[Clip]:
    clips = []
    for name in ("single_speaker", "single_speaker_flite"):
        text = " ".join((EXAMPLES / f"{name}.txt").read_text().split())
        clips.append(Clip(str(EXAMPLES / f"{name}.wav"), text, name, name, 0.0))
    return clips


def test_kenlm_flag_names_a_missing_file_or_package(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit):
        evaluate.main(["--kenlm", str(tmp_path / "nope.arpa")])
    assert "nope.arpa: no such file" in capsys.readouterr().err
    lm = tmp_path / "lm.arpa"
    lm.write_text("\\data\\\n")
    import decoders.beam

    monkeypatch.setattr(decoders.beam, "kenlm_available", lambda: False)
    with pytest.raises(SystemExit):
        evaluate.main(["--kenlm", str(lm)])
    assert "--kenlm needs the kenlm package" in capsys.readouterr().err


@pytest.mark.skipif(not HAVE_KENLM, reason="kenlm python bindings not installed (optional extra: pip install kenlm)")
def test_language_model_rates_decode_the_clips_with_and_without_the_lm(tmp_path, capsys):
    from model import load_model
    from stream.pipeline import DEFAULT_MODEL
    from train.lm import bigram_model, write_arpa

    model = load_model(DEFAULT_MODEL)
    clips = example_clips()
    # An LM of exactly the reference sentences: with it the beam search can only get closer to them.
    lm = tmp_path / "lm.arpa"
    write_arpa(lm, *bigram_model([line for c in clips for line in (EXAMPLES / f"{c.speaker}.txt").read_text()
                                  .splitlines() if line.strip()]))
    log_probs = evaluate.clip_log_probs(model, clips)
    assert [lp.shape for lp in log_probs] == [lp.shape for lp in evaluate.offline_log_probs(
        model, [np.asarray(evaluate._load(c.path)) for c in clips])]
    args = argparse.Namespace(kenlm=lm, lm_weight=1.0, word_bonus=1.0)
    lm_beam = evaluate.language_model_finaliser(model, args)
    rates = evaluate.language_model_rates(model, clips, log_probs, lm_beam, args, stream_clips=1)
    assert rates["clips"] == 2 and rates["stream_clips"] == 1
    # The greedy numbers come from the same log-probs as the clips' greedy transcripts.
    refs = [c.text for c in clips]
    assert rates["greedy_cer"] == evaluate.error_rates(refs, evaluate.transcribe_clips(model, clips))[0]
    # The bundled model reads its own examples well; the in-domain LM does not make it worse.
    assert rates["greedy_cer"] < 0.2 and rates["beam_cer"] < 0.2
    assert rates["lm_cer"] <= rates["beam_cer"] and rates["lm_wer"] <= rates["beam_wer"]
    assert rates["stream_lm_cer"] < 0.2
    assert "beam + LM" in capsys.readouterr().out


def test_clip_log_probs_of_padded_batches_match_each_clip_run_alone(tmp_path):
    """Layer-norm front ends run in padded, masked batches: each clip's log-probs, cut to its own
    frames, are those of the clip run alone, in the order of the input."""
    import soundfile as sf

    from model import load_model
    from tests.checkpoints import write_ctc_checkpoint

    model = load_model(write_ctc_checkpoint(tmp_path / "ckpt", norm="layer")).eval()
    rng = np.random.default_rng(0)
    clips = []
    for i, seconds in enumerate((1.3, 0.7, 2.0, 1.1)):
        path = tmp_path / f"clip{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32), 16000)
        clips.append(Clip(str(path), "a", "s", "v", seconds))
    assert any(len(batch) > 1 for batch, _ in evaluate.offline_batches(model, clips))
    batched = evaluate.clip_log_probs(model, clips)
    alone = evaluate.offline_log_probs(model, [np.asarray(evaluate._load(c.path)) for c in clips])
    for b, a in zip(batched, alone):
        assert b.shape == a.shape
        np.testing.assert_allclose(b, a, atol=1e-4)
