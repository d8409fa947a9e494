"""stream/cli.py: the command line on good and bad input (no tracebacks, clean --json stdout)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from decoders.events import Final
from stream.cli import main
from tests.checkpoints import write_ctc_checkpoint

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return str(write_ctc_checkpoint(tmp_path_factory.mktemp("cli"), norm="layer"))


def _write(path, seconds=1.5, rate=16000, channels=1, subtype="PCM_16", seed=0):
    rng = np.random.default_rng(seed)
    data = (rng.standard_normal((int(rate * seconds), channels)) * 0.2).clip(-1, 1)
    sf.write(str(path), data, rate, subtype=subtype)
    return str(path)


def _run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("rate,channels,subtype", [
    (16000, 1, "PCM_16"), (8000, 1, "PCM_U8"), (48000, 2, "PCM_16"), (44100, 1, "DOUBLE"), (22050, 3, "FLOAT"),
])
def test_json_output_is_one_event_per_line_for_any_format(tmp_path, capsys, ckpt, rate, channels, subtype):
    path = _write(tmp_path / "a.wav", rate=rate, channels=channels, subtype=subtype)
    code, out, err = _run(capsys, ["transcribe", path, "--model", ckpt, "--json", "--no-speakers",
                                   "--chunk-ms", "320", "--right-ms", "160"])
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert events, "a random model still emits partials/finals for noise"
    assert all(e["type"] in {"partial", "final", "speaker_change"} for e in events)
    finals = [e for e in events if e["type"] == "final"]
    partial_segments = {e["segment"] for e in events if e["type"] == "partial"}
    assert partial_segments <= {e["segment"] for e in finals}       # every segment is finalised
    assert all(e["latency"] is not None for e in events)


def test_terminal_output_prints_finals(tmp_path, capsys, ckpt):
    path = _write(tmp_path / "a.wav", seconds=2)
    code, out, err = _run(capsys, ["transcribe", path, "--model", ckpt, "--no-speakers", "--no-beam"])
    assert code == 0, err
    json_code, json_out, _ = _run(capsys, ["transcribe", path, "--model", ckpt, "--no-speakers",
                                           "--no-beam", "--json"])
    texts = [json.loads(line)["text"] for line in json_out.splitlines() if '"final"' in line]
    for text in filter(None, texts):
        assert text in out


@pytest.mark.parametrize("content,needle", [
    (None, "not found"),
    (b"", "cannot read audio file"),
    (b"RIFF\x00\x00\x00\x00WAVEfmt garbage", "cannot read audio file"),
    (b"this is not audio at all" * 50, "cannot read audio file"),
])
def test_bad_files_give_one_clear_error_line(tmp_path, capsys, ckpt, content, needle):
    path = tmp_path / "bad.wav"
    if content is not None:
        path.write_bytes(content)
    code, out, err = _run(capsys, ["transcribe", str(path), "--model", ckpt, "--json"])
    assert code == 2
    assert out == ""
    assert err.startswith("error: ") and needle in err
    assert "Traceback" not in err


def test_zero_length_wav_is_reported(tmp_path, capsys, ckpt):
    path = tmp_path / "empty.wav"
    sf.write(str(path), np.zeros((0, 1)), 16000)
    code, _, err = _run(capsys, ["transcribe", str(path), "--model", ckpt])
    assert code == 2 and "no audio" in err


def test_truncated_wav_keeps_what_was_transcribed(tmp_path, capsys, ckpt):
    path = tmp_path / "t.wav"
    _write(path, seconds=3)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])      # header still claims 3 s
    code, out, err = _run(capsys, ["transcribe", str(path), "--model", ckpt, "--json", "--no-speakers"])
    assert "Traceback" not in err
    if code == 0:       # libsndfile reads what is there
        assert out
    else:
        assert err.startswith("error: ")


def test_kenlm_file_that_is_missing_or_not_a_language_model_is_one_clear_error(tmp_path, capsys, ckpt, monkeypatch):
    import decoders.beam

    monkeypatch.setattr(decoders.beam, "kenlm_available", lambda: True)    # the checks come before any load
    audio = _write(tmp_path / "a.wav")
    notes = tmp_path / "notes.txt"
    notes.write_text("not a language model\n")
    for lm, needle in ((tmp_path / "nope.arpa", "KenLM model not found"), (notes, "is not an ARPA")):
        code, out, err = _run(capsys, ["transcribe", audio, "--model", ckpt, "--kenlm", str(lm)])
        assert code == 2 and out == "" and "Traceback" not in err
        assert err.startswith("error: --kenlm: ") and needle in err and str(lm) in err


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    path = _write(tmp_path / "a.wav")
    code, out, err = _run(capsys, ["transcribe", path, "--model", str(tmp_path / "nope")])
    assert code == 2 and out == ""
    assert "cannot load the model" in err and "nope" in err


def test_python_api_events_are_dataclasses(tmp_path, ckpt):
    from stream import Pipeline

    pipe = Pipeline.from_pretrained(ckpt, speakers=False, beam=False)
    audio = sf.read(_write(tmp_path / "a.wav", seconds=2), dtype="int16")[0]
    s = pipe.new_stream()
    events = s.feed(audio, 16000) + s.finish()
    finals = [e for e in events if isinstance(e, Final)]
    assert finals and all(json.loads(e.to_json())["type"] == "final" for e in finals)


def test_speaker_options_reach_the_tracker(tmp_path, capsys):
    """The bundled model on the two-voice example: --max-speakers 1 keeps one label, the
    default finds the second voice; bad window settings are one clear error line."""
    example = str(EXAMPLES / "two_speakers.wav")
    labels = {}
    for extra in ([], ["--max-speakers", "1"]):
        code, out, err = _run(capsys, ["transcribe", example, "--json", "--no-beam", *extra])
        assert code == 0, err
        events = [json.loads(line) for line in out.splitlines()]
        labels[tuple(extra)] = {e["speaker"] for e in events if e["type"] == "final"}
    assert labels[()] == {"S1", "S2"}
    assert labels[("--max-speakers", "1")] == {"S1"}
    code, out, err = _run(capsys, ["transcribe", example, "--speaker-window", "1", "--speaker-hop", "2"])
    assert code == 2 and out == "" and "Traceback" not in err
    assert "speaker tracking options" in err and "hop_s" in err
    code, out, err = _run(capsys, ["transcribe", example, "--speaker-peak-threshold", "3"])
    assert code == 2 and "peak_threshold" in err and "Traceback" not in err


def test_no_change_detector_reaches_the_source_and_restated_labels_are_marked(capsys):
    import io

    from decoders.events import SpeakerChange
    from stream.cli import CaptionPrinter, build_parser, speaker_tracker_config

    args = build_parser().parse_args(["transcribe", "x.wav", "--no-change-detector"])
    assert speaker_tracker_config(args).change_detector is False
    assert speaker_tracker_config(build_parser().parse_args(["transcribe", "x.wav"])) is None
    out = io.StringIO()
    printer = CaptionPrinter(out)
    printer.show(SpeakerChange(time=3.0, from_speaker="S1", to_speaker="S3", score=0.8))
    printer.show(SpeakerChange(time=3.0, from_speaker="S1", to_speaker="S2", score=0.7))
    first, second = out.getvalue().splitlines()
    assert first.endswith("S1 -> S3 at 00:03.00") and second.endswith("S1 -> S2 at 00:03.00 (label corrected)")


@pytest.mark.parametrize("command", ["transcribe", "serve"])
def test_no_final_pass_reaches_the_pipeline(ckpt, command):
    from stream.cli import build_parser, load_pipeline

    extra = ["x.wav"] if command == "transcribe" else []
    for flags, want in (([], True), (["--no-final-pass"], False)):
        args = build_parser().parse_args([command, *extra, "--model", ckpt, "--no-speakers", *flags])
        assert load_pipeline(args).config.final_pass is want


@pytest.mark.parametrize("command", ["transcribe", "mic", "serve"])
def test_no_packed_weights_reaches_the_model(ckpt, command):
    from model.linear import Linear
    from stream.cli import build_parser, load_pipeline

    extra = ["x.wav"] if command == "transcribe" else []
    for flags, want in (([], True), (["--no-packed-weights"], False)):
        args = build_parser().parse_args([command, *extra, "--model", ckpt, "--no-speakers", *flags])
        layers = [m for m in load_pipeline(args).model.modules() if isinstance(m, Linear)]
        assert layers and all(m.pack_weight is want for m in layers)


@pytest.mark.skipif(importlib.util.find_spec("kenlm") is None,
                    reason="kenlm python bindings not installed (optional extra: pip install kenlm)")
def test_kenlm_reaches_the_final_beam_search(tmp_path, capsys):
    """--kenlm with an LM of the example's own sentences: the bundled model's finals of
    examples/single_speaker.wav come out (nearly) as written, and closer than without it."""
    from train.lm import bigram_model, write_arpa
    from train.metrics import error_rates

    reference = [line for line in (EXAMPLES / "single_speaker.txt").read_text().splitlines() if line.strip()]
    lm = tmp_path / "lm.arpa"
    write_arpa(lm, *bigram_model(reference))
    cer = {}
    for extra in ([], ["--kenlm", str(lm), "--lm-weight", "0.5", "--word-bonus", "1.0"]):
        code, out, err = _run(capsys, ["transcribe", str(EXAMPLES / "single_speaker.wav"), "--json",
                                       "--no-speakers", *extra])
        assert code == 0, err
        text = " ".join(e["text"] for e in map(json.loads, out.splitlines()) if e["type"] == "final")
        cer[bool(extra)] = error_rates([" ".join(reference)], [text])[0]
    assert cer[True] < cer[False] and cer[True] <= 0.05, cer


@pytest.mark.parametrize("command", ["transcribe", "mic", "serve"])
def test_warmup_ms_reaches_the_pipeline(ckpt, command):
    from stream.cli import build_parser, load_pipeline

    extra = ["x.wav"] if command == "transcribe" else []
    for flags, want in (([], 1000.0), (["--warmup-ms", "2500"], 2500.0)):
        args = build_parser().parse_args([command, *extra, "--model", ckpt, "--no-speakers", *flags])
        assert load_pipeline(args).config.group_norm_warmup_ms == want


@pytest.mark.parametrize("flags,needle", [
    (["--warmup-ms", "-1"], "--warmup-ms must be >= 0, got -1"),
    (["--left-ms", "-5"], "left_ms must be >= 0, got -5"),      # would round to 0 frames unnoticed
    (["--right-ms", "nan"], "right_ms must be >= 0, got nan"),
    (["--chunk-ms", "5"], "chunk must be at least one frame"),
])
def test_bad_window_options_are_named_before_the_model_loads(tmp_path, capsys, flags, needle):
    path = _write(tmp_path / "a.wav")
    # A checkpoint that does not exist: the option's error comes first, so nothing was loaded.
    code, out, err = _run(capsys, ["transcribe", path, "--model", str(tmp_path / "missing"), *flags])
    assert code == 2 and out == ""
    assert err.startswith("error: ") and needle in err and "Traceback" not in err, err


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"wavlm-stream {version('wavlm-stream')}\n"


def test_mic_without_a_microphone_says_so_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import sys

    from test_sources import _fake_sounddevice

    monkeypatch.setitem(sys.modules, "sounddevice", _fake_sounddevice([]))
    # A checkpoint that does not exist: the microphone's error comes first, so nothing was loaded.
    code, out, err = _run(capsys, ["mic", "--model", str(tmp_path / "missing")])
    assert code == 2 and out == ""
    assert err.startswith("error: no microphone: PortAudio sees no input device") and "missing" not in err, err


def test_a_closed_stdout_pipe_ends_quietly(tmp_path, ckpt):
    """``transcribe --json | head -1``: the reader stops early; the CLI exits 141 without a traceback."""
    import subprocess
    import sys

    path = _write(tmp_path / "a.wav", seconds=4)
    cli = subprocess.Popen([sys.executable, "-m", "stream.cli", "transcribe", path, "--model", ckpt, "--json",
                            "--no-speakers", "--no-beam", "--chunk-ms", "100"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parent.parent)
    first = cli.stdout.readline()
    cli.stdout.close()   # what `head -1` does after its line
    err = cli.stderr.read().decode()
    assert json.loads(first)["type"] in {"partial", "final"}
    assert cli.wait(timeout=120) == 141 and "Traceback" not in err and "BrokenPipe" not in err, err


def _reference_speaker(turns, start, end):
    """The speaker of the reference turn that overlaps [start, end) most."""
    return max(turns, key=lambda t: min(t.end, end) - max(t.start, start)).label


def test_enrolled_voices_name_the_finals_and_turns(tmp_path, capsys):
    """The two-voice example (held-out voices rh-bdl and pico-gb): single_speaker.wav, rh-bdl saying
    other sentences, enrolled as "bdl" names that voice's turns; pico-gb, enrolled by nobody, is S1;
    an enrolled voice that is not in the meeting (single_speaker_flite.wav's fl-rms) names nothing."""
    from decoders.turns import read_rttm

    example = str(EXAMPLES / "two_speakers.wav")
    with open(EXAMPLES / "two_speakers.rttm") as f:
        reference = read_rttm(f)["two_speakers"]
    rttm = tmp_path / "turns.rttm"
    code, out, err = _run(capsys, ["transcribe", example, "--json", "--no-beam", "--rttm", str(rttm),
                                   "--enrol", f"bdl={EXAMPLES / 'single_speaker.wav'}",
                                   "--enrol", f"rms={EXAMPLES / 'single_speaker_flite.wav'}"])
    assert code == 0, err
    name = {"rh-bdl": "bdl", "pico-gb": "S1"}
    finals = [e for e in map(json.loads, out.splitlines()) if e["type"] == "final"]
    assert len(finals) == 4
    assert [f["speaker"] for f in finals] == [name[_reference_speaker(reference, f["start"], f["end"])]
                                              for f in finals]
    with open(rttm) as f:
        turns = read_rttm(f)["two_speakers"]
    assert {t.label for t in turns} == {"bdl", "S1"}
    assert all(t.label == name[_reference_speaker(reference, t.start, t.end)] for t in turns)


def test_enrol_mistakes_are_one_line_before_the_model_loads(tmp_path, capsys):
    example, voice = str(EXAMPLES / "two_speakers.wav"), str(EXAMPLES / "single_speaker.wav")
    silence = tmp_path / "silence.wav"
    sf.write(str(silence), np.zeros(48000, dtype=np.float32), 16000)
    for extra, message in [
        (["--enrol", "bdl"], "--enrol takes NAME=FILE"),
        (["--enrol", f"S2={voice}"], "unenrolled voice's label"),
        (["--enrol", f"two words={voice}"], "without spaces"),
        (["--enrol", "bdl=/nonexistent.wav"], "audio file not found"),
        (["--enrol", f"a={voice}", "--enrol", f"a={voice}"], "'a' is given twice"),
        (["--enrol", f"a={voice}", "--no-speakers"], "--no-speakers turns it off"),
        (["--enrol", f"a={voice}", "--enrol", f"b={voice}", "--max-speakers", "1"], "max_speakers"),
        (["--enrol", f"quiet={silence}"], "no speech found"),
        # Checked before the model loads: a missing model is not what is reported.
        (["--enrol", "bdl", "--model", str(tmp_path / "missing")], "--enrol takes NAME=FILE"),
    ]:
        code, out, err = _run(capsys, ["transcribe", example, *extra])
        assert code == 2 and out == "" and "Traceback" not in err, (extra, err)
        assert message in err and err.startswith("error: --enrol"), (extra, err)


def test_the_python_api_enrols_and_refuses_what_it_cannot(ckpt):
    from stream import Pipeline

    voice, rate = sf.read(str(EXAMPLES / "single_speaker.wav"), dtype="int16")
    pipe = Pipeline.from_pretrained(None, beam=False)
    pipe.enrol("bdl", np.stack([voice, voice], axis=1), rate)       # int16 stereo: converted like feed()
    assert list(pipe.enrolled) == ["bdl"]
    audio, rate = sf.read(str(EXAMPLES / "two_speakers.wav"), dtype="float32")
    s = pipe.new_stream()
    events = s.feed(audio, rate) + s.finish()
    assert [e.speaker for e in events if isinstance(e, Final)][0] == "bdl"
    with pytest.raises(ValueError, match="needs speaker tracking"):
        Pipeline.from_pretrained(ckpt).enrol("bdl", voice, rate)          # no speaker head
    with pytest.raises(ValueError, match="needs speaker tracking"):
        Pipeline.from_pretrained(None, speakers=False).enrol("bdl", voice, rate)
    with pytest.raises(ValueError, match="speaker name"):
        pipe.enrol("", voice, rate)
    # A bfloat16 transformer (--bf16): the enrolment feeds the head in its own precision, as a stream does.
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # a CPU without BF16 instructions warns that it runs emulated
        fast = Pipeline.from_pretrained(None, beam=False, bf16=True)
    fast.enrol("bdl", voice, rate)
    assert float(fast.enrolled["bdl"] @ pipe.enrolled["bdl"]) > 0.98
