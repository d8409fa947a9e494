"""The synthetic voices of the recipe: engines, source voices, weights and the held-out split.

A *source voice* is one engine voice. A *speaker* is a source voice at a fixed pitch
offset (cents, applied with sox), so one source voice yields several speakers for the
speaker head. Held-out source voices (``HELD_OUT``) and every speaker made from them
never appear in training: they give the test and dev sets and the example meetings.
Weights favour the intelligible engines (RHVoice, flite, pico, festival); the robotic
ones (espeak-ng, MBROLA) add variety at a low weight.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import tempfile


@dataclasses.dataclass(frozen=True)
class SourceVoice:
    name: str      # stable id, used in speaker ids and file names
    engine: str    # espeak | flite | festival | pico | rhvoice
    arg: str       # engine voice argument
    weight: float  # relative share of the training mix
    package: str   # Debian package carrying the voice (licence: see train/README.md)


def _v(name, engine, arg, weight, package):
    return SourceVoice(name, engine, arg, weight, package)


SOURCE_VOICES: tuple[SourceVoice, ...] = (
    # RHVoice (non-free section): the most natural voices here.
    _v("rh-alan", "rhvoice", "alan", 3.0, "rhvoice-english"),
    _v("rh-bdl", "rhvoice", "bdl", 3.0, "rhvoice-english"),
    _v("rh-clb", "rhvoice", "clb", 3.0, "rhvoice-english"),
    _v("rh-slt", "rhvoice", "slt", 3.0, "rhvoice-english"),
    _v("rh-evgeniy", "rhvoice", "evgeniy-eng", 1.0, "rhvoice-english"),
    _v("rh-lyubov", "rhvoice", "lyubov", 1.0, "rhvoice-english"),
    # flite (main)
    _v("fl-awb", "flite", "awb", 2.0, "flite"),
    _v("fl-rms", "flite", "rms", 2.0, "flite"),
    _v("fl-slt", "flite", "slt", 2.0, "flite"),
    _v("fl-kal16", "flite", "kal16", 1.0, "flite"),
    # pico (non-free)
    _v("pico-us", "pico", "en-US", 2.0, "libttspico-data"),
    _v("pico-gb", "pico", "en-GB", 2.0, "libttspico-data"),
    # festival (main: kal, ked, slt hts; non-free: rab, don, *_mbrola)
    _v("fe-kal", "festival", "kal_diphone", 1.5, "festvox-kallpc16k"),
    _v("fe-ked", "festival", "ked_diphone", 1.5, "festvox-kdlpc16k"),
    _v("fe-rab", "festival", "rab_diphone", 1.0, "festvox-rablpc16k"),
    _v("fe-don", "festival", "don_diphone", 0.7, "festvox-don"),
    _v("fe-slt-hts", "festival", "cmu_us_slt_arctic_hts", 1.5, "festvox-us-slt-hts"),
    _v("fe-us1", "festival", "us1_mbrola", 1.0, "festvox-us1"),
    _v("fe-us2", "festival", "us2_mbrola", 1.0, "festvox-us2"),
    _v("fe-us3", "festival", "us3_mbrola", 1.0, "festvox-us3"),
    _v("fe-en1", "festival", "en1_mbrola", 0.7, "festvox-en1"),
    # MBROLA through espeak-ng (contrib + non-free voice databases)
    _v("mb-us1", "espeak", "mb-us1", 0.6, "mbrola-us1"),
    _v("mb-us2", "espeak", "mb-us2", 0.6, "mbrola-us2"),
    _v("mb-us3", "espeak", "mb-us3", 0.6, "mbrola-us3"),
    _v("mb-en1", "espeak", "mb-en1", 0.6, "mbrola-en1"),
    _v("mb-af1", "espeak", "mb-af1-en", 0.5, "mbrola-af1"),
    _v("mb-de4", "espeak", "mb-de4-en", 0.5, "mbrola-de4"),
    _v("mb-fr1", "espeak", "mb-fr1-en", 0.5, "mbrola-fr1"),
    _v("mb-nl2", "espeak", "mb-nl2-en", 0.5, "mbrola-nl2"),
    _v("mb-sw2", "espeak", "mb-sw2-en", 0.5, "mbrola-sw2"),
    # espeak-ng (main): accents x voice variants
    _v("es-us-m3", "espeak", "en-us+m3", 0.4, "espeak-ng-data"),
    _v("es-us-f2", "espeak", "en-us+f2", 0.4, "espeak-ng-data"),
    _v("es-gb-m5", "espeak", "en+m5", 0.4, "espeak-ng-data"),
    _v("es-rp-f4", "espeak", "en-gb-x-rp+f4", 0.4, "espeak-ng-data"),
    _v("es-029-m1", "espeak", "en-029+m1", 0.4, "espeak-ng-data"),
    _v("es-nyc-klatt", "espeak", "en-us-nyc+klatt2", 0.4, "espeak-ng-data"),
    _v("es-lan-f1", "espeak", "en-gb-x-gbclan+f1", 0.4, "espeak-ng-data"),
    _v("es-wmd-m7", "espeak", "en-gb-x-gbcwmd+m7", 0.4, "espeak-ng-data"),
    _v("es-sco-f3", "espeak", "en-gb-scotland+f3", 0.4, "espeak-ng-data"),
    _v("es-us-croak", "espeak", "en-us+croak", 0.3, "espeak-ng-data"),
)

# More MBROLA databases speaking English through espeak-ng (accented, robotic): distinct
# recordings, six of them female, for a larger set of training voices. Kept apart from
# SOURCE_VOICES so that adding them leaves the plan of every earlier clip unchanged; they
# only speak the extra training clips of `train.synth --more-voices N` (run 22 of train/README.md).
MORE_VOICES: tuple[SourceVoice, ...] = tuple(
    _v(f"mb-{db}", "espeak", f"mb-{db}-en", 1.0, f"mbrola-{db}")
    for db in ("de1", "de2", "de3", "de5", "de6", "fr4", "gr2", "hu1", "pl1", "ro1", "sw1")
)

# Never in training. One per engine family, chosen so that no training voice shares
# the recording (rh-bdl is CMU ARCTIC bdl; fl-rms is ARCTIC rms; us3 is held out both
# through festival and through espeak-ng).
HELD_OUT = frozenset({"rh-bdl", "fl-rms", "pico-gb", "fe-ked", "fe-us3", "mb-us3", "mb-de4", "es-sco-f3"})

# Fixed pitch offsets (cents) that turn one source voice into several speakers.
PITCH_OFFSETS = (-250, 0, 250)


def voice_by_name(name: str) -> SourceVoice:
    for v in SOURCE_VOICES + MORE_VOICES:
        if v.name == name:
            return v
    raise KeyError(name)


def synthesise(voice: SourceVoice, text: str, out_wav: str) -> None:
    """Run one engine: write ``text`` spoken by ``voice`` to ``out_wav`` (engine's own rate)."""
    if voice.engine == "espeak":
        cmd = ["espeak-ng", "-v", voice.arg, "-w", out_wav, text]
    elif voice.engine == "flite":
        cmd = ["flite", "-voice", voice.arg, "-t", text, "-o", out_wav]
    elif voice.engine == "pico":
        cmd = ["pico2wave", "-l", voice.arg, "-w", out_wav, text]
    elif voice.engine == "rhvoice":
        subprocess.run(["RHVoice-test", "-p", voice.arg, "-o", out_wav], input=text.encode(),
                       check=True, capture_output=True, timeout=120)
        return
    elif voice.engine == "festival":
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write(text + "\n")
        try:
            subprocess.run(["text2wave", "-eval", f"(voice_{voice.arg})", f.name, "-o", out_wav],
                           check=True, capture_output=True, timeout=120)
        finally:
            os.unlink(f.name)
        return
    else:
        raise ValueError(f"unknown engine {voice.engine}")
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


def sox_effects(tempo: float, pitch_cents: float, reverb: float | None, pad: tuple[float, float]) -> list[str]:
    """sox effect chain: trim silence, tempo, pitch, optional reverb, pad, peak-normalise."""
    fx = ["silence", "1", "0.02", "-50d", "reverse", "silence", "1", "0.02", "-50d", "reverse"]
    if abs(tempo - 1.0) > 1e-3:
        fx += ["tempo", "-s", f"{tempo:.3f}"]
    if abs(pitch_cents) > 1:
        fx += ["pitch", f"{pitch_cents:.0f}"]
    if reverb is not None:
        fx += ["reverb", f"{reverb:.0f}", "50", f"{min(100, reverb + 20):.0f}"]
        fx += ["channels", "1"]
    fx += ["pad", f"{pad[0]:.2f}", f"{pad[1]:.2f}", "norm", "-1"]
    return fx


def render(voice: SourceVoice, text: str, out_path: str, tempo: float = 1.0, pitch_cents: float = 0.0,
           reverb: float | None = None, pad: tuple[float, float] = (0.1, 0.1)) -> None:
    """Synthesise and post-process to 16 kHz mono 16-bit at ``out_path`` (.flac or .wav)."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "raw.wav")
        synthesise(voice, text, raw)
        cmd = ["sox", "-q", raw, "-r", "16000", "-c", "1", "-b", "16", out_path] + sox_effects(tempo, pitch_cents, reverb, pad)
        r = subprocess.run(cmd, capture_output=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"sox failed: {shlex.join(cmd)}: {r.stderr.decode()[-300:]}")
