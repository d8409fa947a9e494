"""Speaker-change detection and diarization quality: the tracker against a simple baseline.

For every meeting (audio + reference RTTM) it prints change-point precision / recall /
F1 at a +-0.5 s collar, DER at a 0.25 s collar (overlap scored; the tracker gives one
speaker at a time), and the detection latency of speaker changes, for

* ``tracker``  -- decoders.speaker.SpeakerTracker (peaks of the neighbouring-window distance, decided
  by the windows after them against online clusters; with a bundled model that has a learned
  change detector, also its verified candidates, and then a ``windows only`` line without them);
* ``baseline`` -- cosine distance between adjacent windows of the same embeddings, a
  change at every local peak above a threshold, a fresh label after every change. Its
  threshold is the best one on the evaluated meetings (an optimistic baseline). It finds
  change times the way the tracker does, without deciding who speaks: the gap between the
  two is what the clusters cost or give (false peaks dropped, labels for the DER).

Detection latency = the stream position (seconds of audio fed) at which the change
event was emitted, minus the reference change time; only matched changes count.

Embeddings come from one pass over each meeting, recorded once, so the tracker and the
baseline see the same windows:

* ``--via engine`` (default): the streaming engine (stream.Pipeline) with its chunk /
  lookahead settings, audio fed in 80 ms pieces, the same way as live audio; the tracker
  events the engine emitted are checked against a replay of the recorded windows.
* ``--via offline``: the model's offline forward over blocks of the meeting (what the
  engine would compute, without the engine), windows pushed every --chunk-ms with the
  --right-ms lookahead added to the emission time.

Meetings: ``--meetings DIR`` (``*.wav``/``*.flac`` with an ``.rttm`` of the same stem;
default ~/.cache/wavlm-stream/meetings, held-out voices), and ``--real N``: N meetings
assembled from real recorded voices shipped by Debian (asterisk-core-sounds-{en,fr,it,ru}-wav:
four professional voice talents, 8 kHz telephone prompts, in four languages) with an
exact RTTM from the assembly; ``--real-wide N``: N meetings assembled the same way from real
wideband microphone recordings (ktuberling-data's spoken words, a volunteer per language, 13
voices), which tell a telephone-channel mismatch from a real-voice one. Four meetings of four
voices are a small sample: use 24 (``--real 24``) and 16 (``--real-wide 16``) to rank models.

    python bench/speaker_eval.py [--model DIR] [--speaker-model DIR] [--via engine|offline]
        [--meetings DIR] [--limit N] [--real N] [--real-wide N] [--tune] [--window 1.5 --hop 0.5 ...]

``--tune`` picks the window geometry and the tracker's thresholds and hysteresis on the first half of the meetings
(dev), then the change detector's settings (if the model has one), and reports both halves, so that the
test numbers are not tuned on themselves.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import glob
import itertools
import math
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from decoders.clustering import OnlineClusters  # noqa: E402
from decoders.speaker import SpeakerTracker, SpeakerTrackerConfig  # noqa: E402
from decoders.turns import SpeechActivity, Turn, read_rttm, write_rttm  # noqa: E402
from speaker_metrics import ChangeCounts, DERCounts, diarization_error, reference_changes  # noqa: E402

SR = 16000
COLLAR_CHANGE = 0.5
COLLAR_DER = 0.25


# ----------------------------------------------------------------------- meetings


@dataclass
class Meeting:
    name: str
    audio: np.ndarray          # float32 16 kHz mono
    ref: list[Turn]


def _read_mono(path) -> tuple[np.ndarray, int]:
    """A recording's samples as float32 mono (channels averaged) and its sample rate."""
    import soundfile as sf
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return data.mean(axis=1), rate


def load_audio(path: Path) -> np.ndarray:
    import soxr
    x, rate = _read_mono(path)
    if rate != SR:
        x = soxr.resample(x, rate, SR).astype(np.float32)
    return x


def load_meetings(directory: Path, limit: int | None) -> list[Meeting]:
    audio_files = sorted(p for p in directory.glob("*") if p.suffix in (".wav", ".flac"))
    out = []
    for a in audio_files:
        rttm = a.with_suffix(".rttm")
        if not rttm.exists():
            continue
        with open(rttm) as f:
            ref = read_rttm(f)
        turns = ref.get(a.stem) or (next(iter(ref.values())) if len(ref) == 1 else None)
        if not turns:
            continue
        out.append(Meeting(a.stem, load_audio(a), turns))
        if limit and len(out) >= limit:
            break
    return out


REAL_VOICES = ("en_US_f_Allison", "fr_CA_f_June", "it_IT_m_Carlo", "ru_RU_f_IvrvoiceRU")
ASTERISK = Path("/usr/share/asterisk/sounds")
# ktuberling-data: the words of a children's game recorded by a volunteer per language, 22-44 kHz.
KTUBERLING = Path("/usr/share/ktuberling/sounds")
WIDE_MIN_SPEECH_S = 40.0   # languages with less (4-15 words) are too short to fill a meeting's turns


def _trim(x: np.ndarray, rate: int, db: float = -40.0) -> np.ndarray:
    """Cut leading/trailing silence (10 ms frames below `db` dBFS)."""
    hop = rate // 100
    n = len(x) // hop
    if n == 0:
        return x
    e = 10 * np.log10(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-10)
    on = np.flatnonzero(e > db)
    return x[on[0] * hop:(on[-1] + 1) * hop] if len(on) else x[:0]


def assemble_meetings(prompts: dict[str, list[np.ndarray]], n: int, seconds: float, seed: int,
                      prefix: str, cast_size=(3, 4), group=lambda label: label) -> list[Meeting]:
    """Meetings assembled from clips of known speakers, with an exact reference.

    Each turn: clips of one speaker (3-12 s), 0.15-0.35 s pauses inside a turn, 0.1-1.0 s
    between turns; the next speaker always differs from the last. The reference has one
    segment per clip. A meeting's cast never has two speakers of one `group` (e.g. two
    pitch variants of one synthetic voice).
    """
    rng = np.random.default_rng(seed)
    labels = sorted(k for k, v in prompts.items() if v)
    meetings = []
    for m in range(n):
        size = cast_size[m % len(cast_size)]
        cast, groups = [], set()
        for k in rng.permutation(len(labels)):
            if group(labels[k]) not in groups and len(cast) < size:
                cast.append(labels[k])
                groups.add(group(labels[k]))
        pieces, ref, t, prev = [], [], 0.0, None
        while t < seconds:
            spk = rng.choice([v for v in cast if v != prev])
            target = rng.uniform(3.0, 12.0)
            start = t
            while t - start < target:
                clip = prompts[spk][rng.integers(len(prompts[spk]))]
                if t > start:
                    gap = rng.uniform(0.15, 0.35)
                    pieces.append(np.zeros(int(gap * SR), np.float32))
                    t += gap
                pieces.append(clip)
                ref.append(Turn(t, t + len(clip) / SR, spk))
                t += len(clip) / SR
            gap = rng.uniform(0.1, 1.0)
            pieces.append(np.zeros(int(gap * SR), np.float32))
            t += gap
            prev = spk
        # Exact sample positions (the float clock above drifts by rounding the gaps).
        meetings.append(Meeting(f"{prefix}{m:02d}", np.concatenate(pieces), _exact_turns(pieces, ref)))
    return meetings


def _recorded_clips(files, min_seconds: float) -> list[np.ndarray]:
    """Recordings as 16 kHz mono float32 clips, leading/trailing silence cut, shorter ones dropped."""
    import soxr
    clips = []
    for f in files:
        x, rate = _read_mono(f)
        x = _trim(x, rate)              # at the recording's own rate, before resampling
        if len(x) >= min_seconds * rate:
            clips.append(soxr.resample(x, rate, SR).astype(np.float32))
    return clips


def build_real_meetings(n: int, seconds: float = 90.0, seed: int = 0) -> list[Meeting]:
    """Meetings of four real recorded speakers (Debian asterisk prompts, see module docstring)."""
    voices = [v for v in REAL_VOICES if (ASTERISK / v).is_dir()]
    if len(voices) < 2:
        raise SystemExit("--real needs the Debian packages asterisk-core-sounds-{en,fr,it,ru}-wav "
                         "(apt-get install asterisk-core-sounds-en-wav ...)")
    prompts = {v: _recorded_clips(sorted(glob.glob(str(ASTERISK / v / "*.wav"))), 1.0) for v in voices}
    return assemble_meetings(prompts, n, seconds, seed, "real")


def build_wide_meetings(n: int, seconds: float = 90.0, seed: int = 0) -> list[Meeting]:
    """Meetings of real wideband voices: ktuberling-data's spoken words, one folder per language,
    taken as one speaker each (the languages with at least WIDE_MIN_SPEECH_S of speech: 13 on the machine
    of the README's --real-wide numbers, 10 with Debian 12.11's ktuberling-data 4:22.12.3-1, so compare
    DERs measured on one machine).

    Unlike the asterisk prompts these are full-band microphone recordings, so the two sets
    together separate a telephone-channel mismatch from a real-voice one."""
    return assemble_meetings(wide_voices("--real-wide"), n, seconds, seed, "wide")


def wide_voices(needed_by: str) -> dict[str, list[np.ndarray]]:
    """ktuberling-data's voices with at least WIDE_MIN_SPEECH_S of speech: name -> their word clips
    (16 kHz float32, silence trimmed). SystemExit naming `needed_by` without the package or two voices."""
    if not KTUBERLING.is_dir():
        raise SystemExit(f"{needed_by} needs the Debian package ktuberling-data (apt-get install ktuberling-data)")
    prompts: dict[str, list[np.ndarray]] = {}
    for folder in sorted(p for p in KTUBERLING.iterdir() if p.is_dir()):
        clips = _recorded_clips(sorted(folder.glob("*.ogg")), 0.4)   # single words: most last 0.7-1.6 s
        if sum(len(c) for c in clips) >= WIDE_MIN_SPEECH_S * SR:
            prompts[folder.name] = clips
    if len(prompts) < 2:
        raise SystemExit(f"{needed_by}: fewer than two voices with {WIDE_MIN_SPEECH_S:g} s of speech in {KTUBERLING}")
    return prompts


def build_clip_meetings(directory: Path, n: int, seconds: float = 90.0, seed: int = 0,
                        per_speaker: int = 40) -> list[Meeting]:
    """Meetings assembled from a directory of per-speaker subdirectories of clips (e.g. the
    held-out test voices of train/: ``<voice>_p<cents>/*.flac``); pitch variants of one
    voice never meet."""
    prompts = {}
    for d in sorted(p for p in directory.iterdir() if p.is_dir()):
        files = sorted(p for p in d.iterdir() if p.suffix in (".wav", ".flac"))[:per_speaker]
        prompts[d.name] = [_trim(load_audio(f), SR) for f in files]
    return assemble_meetings(prompts, n, seconds, seed, "clips", group=lambda lab: lab.split("_p")[0])


def _exact_turns(pieces: list[np.ndarray], ref: list[Turn]) -> list[Turn]:
    out, pos, k = [], 0, 0
    for p in pieces:
        if p.any():
            out.append(Turn(pos / SR, (pos + len(p)) / SR, ref[k].label))
            k += 1
        pos += len(p)
    return out


# ------------------------------------------------------------------ windows


@dataclass(frozen=True)
class Recorded:
    start: float
    end: float
    embedding: np.ndarray | None
    fraction: float
    emitted_at: float            # stream position (s) when the window reached the tracker


@dataclass(frozen=True)
class RecordedDetector:
    """What the model's change detector gave the tracker: a stream.speakers.ChangeCandidate or ChangePeak."""

    item: object
    emitted_at: float            # stream position (s) when it reached the tracker


@dataclass
class Extracted:
    """What one pass over a meeting gives: enough to replay any tracker config.

    For the bundled head the per-frame speaker features of each engine chunk are kept, so
    windows of any length / hop can be pooled later at no model cost; other sources keep
    the windows of the configured geometry.
    """

    speech: np.ndarray                                 # 20 ms speech frames (bool), the energy VAD
    chunks: list[tuple[int, "torch.Tensor", float]] | None = None   # (first frame, (n, P) features, emitted_at)
    windows: list[Recorded] | None = None
    geometry: tuple[float, float] | None = None        # (window_s, hop_s) of `windows`
    engine_events: list | None = None                  # (emitted_at, SpeakerChange) from the engine
    make_windows: object = None                        # config -> windows (oracle embeddings)
    _cache: dict = dataclasses.field(default_factory=dict)


def uses_detector(ex: Extracted, config: SpeakerTrackerConfig, model) -> bool:
    """Does the replay of `ex` with `config` get change candidates from the model's change detector?"""
    return ex.chunks is not None and config.change_detector and getattr(model, "change_detector", None) is not None


def _recorded(item, emitted_at: float) -> Recorded | RecordedDetector:
    from stream.speakers import SpeakerWindow
    if not isinstance(item, SpeakerWindow):
        return RecordedDetector(item, emitted_at)
    return Recorded(item.start_s, item.end_s, item.embedding, item.speech_fraction, emitted_at)


def windows_for(ex: Extracted, config: SpeakerTrackerConfig, model) -> list[Recorded | RecordedDetector]:
    """The windows (and change candidates) a tracker with `config` sees (pooled from the recorded
    chunks when possible)."""
    if ex.make_windows is not None:
        key = (config.window_s, config.hop_s)
        if key not in ex._cache:
            ex._cache[key] = ex.make_windows(config)
        return ex._cache[key]
    if ex.chunks is None:
        if ex.geometry != (config.window_s, config.hop_s):
            raise SystemExit("window geometry can only be varied for the bundled speaker head")
        return ex.windows
    key = (config.window_s, config.hop_s, uses_detector(ex, config, model),
           min(config.detector_threshold, config.detector_weak_threshold),
           config.detector_min_gap_s, config.detector_before_s, config.detector_after_s, config.detector_support,
           config.detector_sure, config.detector_second_look_s)
    if key not in ex._cache:
        from stream.speakers import BundledSpeakerHead
        src = BundledSpeakerHead(model, config)
        out = []
        for first, feats, at in ex.chunks:
            sp = np.ones(feats.shape[0], dtype=np.float32)
            known = ex.speech[first:first + feats.shape[0]]
            sp[:len(known)] = known
            out += [_recorded(item, at) for item in src.push_frames(feats, first, sp)]
        last = ex.chunks[-1][2] if ex.chunks else 0.0
        out += [_recorded(item, last) for item in src.finish()]
        ex._cache[key] = out
    return ex._cache[key]


def engine_extractor(args, config: SpeakerTrackerConfig, model):
    """A function meeting -> Extracted, through the streaming engine (stream.Pipeline)."""
    from decoders.events import SpeakerChange
    from stream.pipeline import Pipeline, StreamConfig
    from stream.speakers import BundledSpeakerHead, speaker_source_factory

    factory = speaker_source_factory(model, args.speaker_model)
    if factory is None:
        raise SystemExit(f"{args.model or 'the bundled model'} has no speaker head; pass --speaker-model")
    position = [0.0]
    streams = []

    class Factory(type(factory)):
        """Records what reaches the tracker (and, for the bundled head, each chunk's features)."""

        def new_stream(self, tracker_config=None):
            s = super().new_stream(tracker_config)
            rec = {"windows": [], "speech": [], "chunks": []}
            push, push_speech = s.tracker.push, s.tracker.push_speech

            def track(start_s, end_s, embedding, fraction):
                rec["windows"].append(Recorded(start_s, end_s, None if embedding is None else np.array(embedding),
                                               fraction, position[0]))
                return push(start_s, end_s, embedding, fraction)

            def track_speech(first, frame_s, speech):
                rec["speech"].append(np.asarray(speech) >= 0.5)
                push_speech(first, frame_s, speech)
            s.tracker.push, s.tracker.push_speech = track, track_speech
            if isinstance(s.source, BundledSpeakerHead):
                frames = s.source.push_frames

                def record_frames(features, first_frame, speech=None):
                    rec["chunks"].append((first_frame, features.detach().clone(), position[0]))
                    return frames(features, first_frame, speech)
                s.source.push_frames = record_frames
            streams.append(rec)
            return s

    rec_factory = Factory(factory.kind, factory.model, factory.frame_seconds, **factory.source_kwargs)
    stream_config = StreamConfig(chunk_ms=args.chunk_ms, left_ms=args.left_ms, right_ms=args.right_ms,
                                 beam=False)
    pipe = Pipeline(model, stream_config, rec_factory, config)

    def run(meeting: Meeting) -> Extracted:
        stream = pipe.new_stream()
        piece = int(0.08 * SR)
        events = []
        for i in range(0, len(meeting.audio), piece):
            x = meeting.audio[i:i + piece]
            position[0] = (i + len(x)) / SR
            events += [(position[0], e) for e in stream.feed(x, SR) if isinstance(e, SpeakerChange)]
        events += [(position[0], e) for e in stream.finish() if isinstance(e, SpeakerChange)]
        rec = streams[-1]
        speech = np.concatenate(rec["speech"]) if rec["speech"] else np.zeros(0, dtype=bool)
        return Extracted(speech, rec["chunks"] or None, rec["windows"], (config.window_s, config.hop_s), events)
    return run


def offline_extractor(args, config: SpeakerTrackerConfig, model):
    """A function meeting -> Extracted: the bundled model's offline forward in blocks, cut into
    --chunk-ms chunks emitted --right-ms after their end (as the engine would)."""
    from stream.speakers import offline_speaker_features
    from stream.vad import EnergyVAD

    if not callable(getattr(model, "speaker_frame_features", None)):
        raise SystemExit("--via offline needs the bundled model (a speaker head)")
    stride = int(np.prod(model.config.conv_stride))
    chunk = max(1, int(round(args.chunk_ms / 1000 * SR / stride)))
    right_s = args.right_ms / 1000

    def run(meeting: Meeting) -> Extracted:
        feats = offline_speaker_features(model, meeting.audio)
        vad = EnergyVAD(keep_frames=None)
        vad.push(meeting.audio)
        chunks = [(a, feats[a:a + chunk], min(a + chunk, feats.shape[0]) * stride / SR + right_s)
                  for a in range(0, feats.shape[0], chunk)]
        return Extracted(vad.speech(0, vad.frames) >= 0.5, chunks)
    return run


def oracle_extractor(args, noise: float, outliers: float = 0.0, dim: int = 64):
    """A function meeting -> Extracted with *oracle* embeddings, to measure the tracker alone.

    Each reference speaker gets a random unit vector; a window's embedding is the mix of the
    vectors of the speakers heard in it (weighted by their speech time in the window) plus
    Gaussian noise of norm ~`noise` (and, with probability `outliers`, an unrelated random
    vector instead: a cough, a laugh); speech fractions and frame speech come from the energy
    VAD of the audio, emission times from the engine's chunk + lookahead, as for the model.
    What the tracker scores here is its own timing and logic on the real turn structure
    (pauses, overlaps, short turns), with embeddings as good as `noise` allows.
    """
    from stream.vad import EnergyVAD

    chunk_s, right_s = args.chunk_ms / 1000, args.right_ms / 1000

    def run(meeting: Meeting) -> Extracted:
        vad = EnergyVAD(keep_frames=None)
        vad.push(meeting.audio)
        speech = vad.speech(0, vad.frames) >= 0.5
        rng = np.random.default_rng(zlib.crc32(meeting.name.encode()))
        labels = sorted({t.label for t in meeting.ref})
        vec = {lab: v / np.linalg.norm(v) for lab, v in zip(labels, rng.standard_normal((len(labels), dim)))}
        total = len(meeting.audio) / SR

        def make(cfg: SpeakerTrackerConfig) -> list[Recorded]:
            out = []
            k = int(np.ceil(cfg.window_s / cfg.hop_s - 1e-9))
            while k * cfg.hop_s <= total + 1e-9:
                end = k * cfg.hop_s
                start = max(0.0, end - cfg.window_s)
                f0, f1 = int(round(start / 0.02)), int(round(end / 0.02))
                frac = float(speech[f0:f1].mean()) if f1 > f0 else 0.0
                mix = np.zeros(dim)
                for t in meeting.ref:
                    ov = min(end, t.end) - max(start, t.start)
                    if ov > 0:
                        mix += ov * vec[t.label]
                emitted = np.ceil(end / chunk_s - 1e-9) * chunk_s + right_s
                if frac > 0 and mix.any():
                    e = mix / np.linalg.norm(mix) + noise * rng.standard_normal(dim) / np.sqrt(dim)
                    if rng.random() < outliers:
                        e = rng.standard_normal(dim)
                    out.append(Recorded(start, end, e, frac, emitted))
                else:
                    out.append(Recorded(start, end, None, frac, emitted))
                k += 1
            return out
        return Extracted(speech, make_windows=make)
    return run


# ------------------------------------------------------------------- systems


@dataclass
class Result:
    changes: list[tuple[float, float]]   # (change time, emitted_at)
    turns: list[Turn]


def run_tracker(windows: list[Recorded | RecordedDetector], speech: np.ndarray, config: SpeakerTrackerConfig,
                candidates: bool = False) -> Result:
    from stream.speakers import feed_tracker
    tracker = SpeakerTracker(config, candidates=candidates)
    if len(speech):
        tracker.push_speech(0, 0.02, speech)
    changes = []
    for w in windows:
        if isinstance(w, RecordedDetector):
            events = feed_tracker(tracker, w.item)
        else:
            events = tracker.push(w.start, w.end, w.embedding, w.fraction)
        changes += [(ev.time, w.emitted_at) for ev in events if ev.from_speaker is not None]
    end = windows[-1].emitted_at if windows else 0.0
    changes += [(ev.time, end) for ev in tracker.finish() if ev.from_speaker is not None]
    return Result(first_statements(changes), tracker.turns())


def first_statements(changes: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(change time, emitted_at) of change events, without the events that restate the label of an
    earlier change at the same time (decoders/speaker.py: labels from a change candidate are confirmed
    by the windows after it): those are not new changes, and the latency is the first event's."""
    seen: set[float] = set()
    out = []
    for t, at in changes:
        if t not in seen:
            seen.add(t)
            out.append((t, at))
    return out


def replay(ex: Extracted, config: SpeakerTrackerConfig, model) -> Result:
    """The tracker with `config` on one meeting's recorded windows / features."""
    return run_tracker(windows_for(ex, config, model), ex.speech, config, uses_detector(ex, config, model))


def run_baseline(windows: list[Recorded], speech: np.ndarray, config: SpeakerTrackerConfig,
                 threshold: float) -> Result:
    """Adjacent-window cosine distance; a change at each local peak above `threshold`.

    Speech windows only (same speech rule as the tracker). A change is placed where the
    window that peaks is half new (its end minus half a window) and emitted with the window
    after the peak (needed to know it is a peak). Each change opens a fresh label.
    """
    windows = [w for w in windows if isinstance(w, Recorded)]
    sw = [w for w in windows if config.is_speech(w.embedding, w.fraction)]
    e = [w.embedding / np.linalg.norm(w.embedding) for w in sw]
    d = [0.0] + [1.0 - float(e[i - 1] @ e[i]) for i in range(1, len(e))]
    changes = []
    for i in range(1, len(d)):
        nxt = d[i + 1] if i + 1 < len(d) else -1.0
        if d[i] > threshold and d[i] >= d[i - 1] and d[i] > nxt:
            t = max(sw[i].start, sw[i].end - config.window_s / 2)
            emitted = sw[i + 1].emitted_at if i + 1 < len(sw) else sw[i].emitted_at
            changes.append((t, emitted))
    # Turns: the same speech/silence rules as the tracker, a new label at each change.
    activity = SpeechActivity()
    if len(speech):
        activity.add_frames(0, 0.02, speech)
    for w in windows:
        activity.add_window(w.start, w.end, w.fraction if w.embedding is not None else 0.0)
    if not sw:
        return Result(changes, [])
    times = [sw[0].start] + [t for t, _ in changes]

    def label_at(t: float) -> str | None:
        i = bisect.bisect_right(times, t) - 1
        return None if i < 0 else OnlineClusters.label(i)

    return Result(changes, activity.turns(*activity.span(), times, label_at, config.min_pause_s))


@dataclass
class Scores:
    changes: ChangeCounts
    der: DERCounts
    latencies: list[float]

    def line(self, name: str) -> str:
        lat = np.array(self.latencies) if self.latencies else np.array([np.nan])
        t = max(self.der.total, 1e-9)
        return (f"{name:<20} P {self.changes.precision:5.3f}  R {self.changes.recall:5.3f}  "
                f"F1 {self.changes.f1:5.3f}  DER {100 * self.der.der:5.1f}% "
                f"(miss {100 * self.der.miss / t:4.1f} fa {100 * self.der.false_alarm / t:4.1f} "
                f"conf {100 * self.der.confusion / t:4.1f})  latency median {np.median(lat):4.2f} s "
                f"p90 {np.percentile(lat, 90):4.2f} s  [{self.changes.n_ref} ref / {self.changes.n_hyp} hyp]")


def score(meetings: list[Meeting], results: list[Result]) -> Scores:
    cc, dc, lat = ChangeCounts(), DERCounts(), []
    for m, r in zip(meetings, results):
        ref = reference_changes(m.ref)
        hyp = [t for t, _ in r.changes]
        for i, j in cc.add(ref, hyp, COLLAR_CHANGE):
            lat.append(r.changes[j][1] - ref[i])
        dc.add(diarization_error(m.ref, r.turns, collar=COLLAR_DER))
    return Scores(cc, dc, lat)


def distance_report(meetings: list[Meeting], windows: list[list[Recorded]], config) -> str:
    """Cosine distances between single-speaker speech windows: same vs different speaker, as
    given and after removing each meeting's mean embedding (a diagnostic: a model whose
    embeddings share one large constant component separates speakers only after that)."""
    rng = np.random.default_rng(0)
    rows = {"as given": ([], []), "meeting mean removed": ([], [])}
    for m, ws in zip(meetings, windows):
        labels, vecs = [], []
        for w in ws:
            if not isinstance(w, Recorded) or not config.is_speech(w.embedding, w.fraction):
                continue
            who = {t.label for t in m.ref if t.start < w.end and t.end > w.start}
            if len(who) == 1:
                labels.append(who.pop())
                vecs.append(np.asarray(w.embedding, dtype=np.float64))
        if len(vecs) < 2:
            continue
        X = np.stack(vecs)
        pairs = rng.integers(len(X), size=(min(2000, len(X) ** 2), 2))
        for name, Y in (("as given", X), ("meeting mean removed", X - X.mean(axis=0))):
            U = Y / np.maximum(np.linalg.norm(Y, axis=1, keepdims=True), 1e-12)
            same, diff = rows[name]
            for i, j in pairs:
                if i != j:
                    (same if labels[i] == labels[j] else diff).append(1.0 - float(U[i] @ U[j]))
    same, diff = rows["as given"]
    if not same or not diff:
        return "window distances: not enough single-speaker windows"
    q = lambda v: " / ".join(f"{np.percentile(v, p):.2f}" for p in (10, 50, 90))  # noqa: E731
    lines = [f"cosine distance between single-speaker windows of a meeting (p10 / p50 / p90), {name}: "
             f"same speaker {q(s)}; different speakers {q(d)}" for name, (s, d) in rows.items()]
    if np.median(diff) < 0.01:
        lines.append("warning: every window has (nearly) the same embedding: the speaker model gives no "
                     "speaker information as it is (collapsed or untrained head)")
    return "\n".join(lines)


def _pick(trials: list[tuple[float, float, float, SpeakerTrackerConfig]]) -> SpeakerTrackerConfig:
    """From (F1, median latency, DER, config) trials: among the settings within 0.01 of the best F1 and
    within 3 points of the best DER among those (shorter windows react sooner but confuse labels, which
    diarization users see), the lowest median latency (to 0.1 s), then DER."""
    top = max(t[0] for t in trials)
    near = [t for t in trials if t[0] >= top - 0.01]
    best_der = min(t[2] for t in near)
    return min((t for t in near if t[2] <= best_der + 0.03), key=lambda t: (round(t[1], 1), t[2]))[3]


def _detector_settings(config: SpeakerTrackerConfig) -> str:
    return (f"detector_threshold {config.detector_threshold:.2f}, detector_weak_threshold "
            f"{config.detector_weak_threshold:.2f}, detector_after_s {config.detector_after_s:.2f}, "
            f"detector_verify {config.detector_verify:.2f}, detector_sure {config.detector_sure:.2f}, "
            f"detector_second_look_s {config.detector_second_look_s:.2f}, "
            f"detector_window_gap_s {config.detector_window_gap_s}, "
            f"detector_support {config.detector_support:.2f}, "
            f"detector_support_waived {config.detector_support_waived:.2f}")


def evaluate(name: str, meetings: list[Meeting], extracted: list[Extracted], config, model, tune: bool,
             also: list[dict[str, float]] = ()) -> SpeakerTrackerConfig:
    """Print the scores of `config` (tuned first with `tune`) on the meetings, with the windows alone
    and the baseline, and replays of the same windows with each of `also`'s {field: value} changes."""
    print(f"\n== {name}: {len(meetings)} meetings, {sum(len(m.audio) for m in meetings) / SR / 60:.1f} min, "
          f"{sum(len(reference_changes(m.ref)) for m in meetings)} speaker changes")

    def results(cfg, idx, system="tracker", thr=None):
        out = []
        for i in idx:
            out.append(replay(extracted[i], cfg, model) if system == "tracker"
                       else run_baseline(windows_for(extracted[i], cfg, model), extracted[i].speech, cfg, thr))
        return out

    def trial(cfg, idx) -> tuple[float, float, float, SpeakerTrackerConfig]:
        """(change F1, median latency, DER, cfg) of the tracker with `cfg` on meetings `idx`."""
        sc = score([meetings[i] for i in idx], results(cfg, idx))
        return sc.changes.f1, float(np.median(sc.latencies)) if sc.latencies else 9.9, sc.der.der, cfg

    everyone = list(range(len(meetings)))
    print(distance_report(meetings, [windows_for(e, config, model) for e in extracted], config))
    sets = [("all", everyone)]
    if tune:
        half = max(1, len(meetings) // 2)
        dev, test = everyone[:half], everyone[half:]
        geometries = [(config.window_s, config.hop_s)]
        if extracted[0].chunks is not None or extracted[0].make_windows is not None:
            # Hops that divide the engine's 640 ms chunk end windows at chunk ends (no wait for the grid).
            geometries = [(w, h) for w in (1.0, 1.28, 1.5, 2.0) for h in (0.32, 0.5)]
        trials = []
        for window_s, hop_s in geometries:
            for peak in np.arange(0.2, 0.45, 0.05):
                for hyst, change, new_thr, ret, ratio in itertools.product((1, 2), (0.4, 0.5, 0.6), (0.6, 0.7, 0.8),
                                                                           (0.0, 0.4, 0.5), (0.0, 2.0)):
                    cfg = dataclasses.replace(config, window_s=window_s, hop_s=hop_s,
                                              peak_threshold=float(round(peak, 2)), hysteresis=hyst,
                                              change_threshold=change, new_speaker_threshold=new_thr,
                                              return_threshold=ret, peak_ratio=ratio)
                    trials.append(trial(cfg, dev))
        config = _pick(trials)
        print(f"tuned on dev ({len(dev)} meetings): window {config.window_s} s, hop {config.hop_s} s, "
              f"peak_threshold {config.peak_threshold:.2f}, hysteresis {config.hysteresis}, "
              f"change_threshold {config.change_threshold:.2f}, "
              f"new_speaker_threshold {config.new_speaker_threshold:.2f}, "
              f"return_threshold {config.return_threshold:.2f}, peak_ratio {config.peak_ratio:.1f}")
        if uses_detector(extracted[0], config, model):
            # Then the change detector's settings, the window settings fixed (the windows still label
            # the speakers and add the changes the detector misses), among those that keep the DER
            # within two points of the windows alone: the detector is there to react sooner, not to
            # buy change F1 with labels.
            windows_only_der = trial(dataclasses.replace(config, change_detector=False), dev)[2]
            trials = []
            for weak, after, verify, sure, gap, support, waived in itertools.product(
                    (0.6, 0.8, 0.95), (0.5, 0.75), (0.3, 0.4), (0.0, 0.6), (1.5, math.inf), (0.0, 0.05, 0.1),
                    (0.7, 2.0)):
                cfg = dataclasses.replace(config, detector_weak_threshold=weak, detector_after_s=after,
                                          detector_verify=verify, detector_sure=sure, detector_window_gap_s=gap,
                                          detector_support=support, detector_support_waived=waived)
                trials.append(trial(cfg, dev))
            kept = [t for t in trials if t[2] <= windows_only_der + 0.02]
            if kept:
                config = _pick(kept)
                print(f"tuned the change detector on dev: {_detector_settings(config)}")
            else:
                config = dataclasses.replace(config, change_detector=False)
                print(f"no change detector setting keeps the DER within two points of the windows alone "
                      f"({100 * windows_only_der:.1f} %): windows only")
        sets = [("dev", dev), ("test", test)] if test else [("dev", dev)]
    # Baseline threshold: the best F1 over all meetings (optimistic for the baseline).
    thresholds = np.arange(0.01, 0.9, 0.01)
    f1s = [score(meetings, results(config, everyone, "baseline", t)).changes.f1 for t in thresholds]
    best_b = float(thresholds[int(np.argmax(f1s))])
    print(f"tracker: window {config.window_s} s, hop {config.hop_s} s, peak_threshold {config.peak_threshold:.2f}, "
          f"change_threshold {config.change_threshold:.2f}, hysteresis {config.hysteresis}, new_speaker_threshold "
          f"{config.new_speaker_threshold:.2f}, return_threshold {config.return_threshold:.2f}, peak_ratio "
          f"{config.peak_ratio:.1f}, max_speakers "
          f"{config.max_speakers}, min_speech_fraction {config.min_speech_fraction}; baseline: same windows, "
          f"threshold {best_b:.2f} (best F1 on all meetings)")
    detector = uses_detector(extracted[0], config, model)
    if detector:
        print(f"with the model's change detector: {_detector_settings(config)}; 'windows only' = the same "
              f"tracker without it")
    for set_name, idx in sets:
        ms = [meetings[i] for i in idx]
        print(score(ms, results(config, idx)).line(f"[{set_name}] tracker"))
        for changes in also:
            variant = dataclasses.replace(config, **changes)
            label = ", ".join(f"{field} {value:g}" for field, value in changes.items())
            print(score(ms, results(variant, idx)).line(f"[{set_name}] tracker, {label}"))
        if detector:
            windows_only = dataclasses.replace(config, change_detector=False)
            print(score(ms, results(windows_only, idx)).line(f"[{set_name}] windows only"))
        print(score(ms, results(config, idx, "baseline", best_b)).line(f"[{set_name}] baseline"))
    return config


# Command-line options for SpeakerTrackerConfig fields (default: the field's default).
TRACKER_OPTIONS = (
    ("--window", "window_s"), ("--hop", "hop_s"), ("--peak-threshold", "peak_threshold"),
    ("--change-threshold", "change_threshold"), ("--hysteresis", "hysteresis"),
    ("--new-threshold", "new_speaker_threshold"), ("--return-threshold", "return_threshold"),
    ("--peak-ratio", "peak_ratio"), ("--detector-threshold", "detector_threshold"),
    ("--detector-weak-threshold", "detector_weak_threshold"), ("--detector-after", "detector_after_s"),
    ("--detector-verify", "detector_verify"), ("--detector-sure", "detector_sure"),
    ("--detector-second-look", "detector_second_look_s"), ("--detector-gap", "detector_window_gap_s"),
    ("--detector-support", "detector_support"), ("--detector-support-waived", "detector_support_waived"),
    ("--max-speakers", "max_speakers"),
    ("--min-speech", "min_speech_fraction"),
)


def _field_changes(item: str) -> dict[str, float]:
    """'peak_threshold=0.2,peak_ratio=0' -> {'peak_threshold': 0.2, 'peak_ratio': 0.0}, each field
    checked against SpeakerTrackerConfig (its type and, together, its range checks)."""
    changes = {}
    for part in item.split(","):
        field, _, value = (x.strip() for x in part.partition("="))
        default = getattr(SpeakerTrackerConfig, field, None)
        if not isinstance(default, (int, float)) or isinstance(default, bool) or not value:
            raise SystemExit(f"--also {item!r}: expected FIELD=NUMBER[,FIELD=NUMBER...] with numeric "
                             f"SpeakerTrackerConfig fields, got {part!r}")
        try:
            changes[field] = type(default)(value)
        except ValueError:
            raise SystemExit(f"--also {item!r}: {value!r} is not a {type(default).__name__}") from None
    try:
        SpeakerTrackerConfig(**changes)      # its own range checks
    except ValueError as e:
        raise SystemExit(f"--also {item!r}: {e}") from None
    return changes


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="CTC checkpoint (default: the bundled model)")
    p.add_argument("--speaker-model", default=None, help="x-vector / frame-classification checkpoint")
    p.add_argument("--via", choices=("engine", "offline"), default="engine")
    p.add_argument("--meetings", default=str(Path.home() / ".cache/wavlm-stream/meetings"))
    p.add_argument("--limit", type=int, default=None, help="at most this many synthetic meetings")
    p.add_argument("--real", type=int, default=0, help="also N meetings of real recorded voices")
    p.add_argument("--real-wide", type=int, default=0,
                   help="also N meetings of real wideband voices (ktuberling-data's recorded words)")
    p.add_argument("--real-seconds", type=float, default=90.0, help="length of each assembled meeting")
    p.add_argument("--clips", default=None, metavar="DIR",
                   help="also assemble meetings from per-speaker clip folders in DIR (e.g. held-out voices)")
    p.add_argument("--clips-n", type=int, default=8, help="how many meetings to assemble from --clips")
    p.add_argument("--tune", action="store_true",
                   help="tune geometry (bundled head), threshold and hysteresis on the first half, report both")
    p.add_argument("--chunk-ms", type=float, default=640.0)
    p.add_argument("--left-ms", type=float, default=2000.0)
    p.add_argument("--right-ms", type=float, default=320.0)
    for flag, field in TRACKER_OPTIONS:
        default = getattr(SpeakerTrackerConfig, field)
        p.add_argument(flag, dest=field, type=type(default), default=default)
    p.add_argument("--no-change-detector", action="store_true", help="the windows alone, not the model's detector")
    p.add_argument("--also", action="append", default=[], metavar="FIELD=VALUE[,FIELD=VALUE...]",
                   help="also score the tracker with these SpeakerTrackerConfig fields changed, on the same "
                        "windows (no second model pass; repeatable, one variant each)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rttm-dir", default=None, help="write the tracker's RTTM per meeting here")
    p.add_argument("--oracle-noise", type=float, default=None, metavar="NOISE",
                   help="instead of a model: oracle embeddings (reference speakers' random vectors mixed by "
                        "window content, plus noise of this norm), to measure the tracker's own timing and logic")
    p.add_argument("--oracle-outliers", type=float, default=0.0, metavar="P",
                   help="with --oracle-noise: this fraction of speech windows get an unrelated random embedding")
    args = p.parse_args(argv)
    also = [_field_changes(item) for item in args.also]

    import torch
    from model import load_model
    from stream.pipeline import DEFAULT_MODEL
    torch.set_num_threads(args.threads)
    config = SpeakerTrackerConfig(**{field: getattr(args, field) for _, field in TRACKER_OPTIONS},
                                  change_detector=not args.no_change_detector)
    groups = []
    mdir = Path(args.meetings).expanduser()
    if mdir.is_dir():
        syn = load_meetings(mdir, args.limit)
        if syn:
            groups.append((f"synthetic meetings ({mdir})", syn))
    if args.clips:
        groups.append((f"meetings assembled from {args.clips}",
                       build_clip_meetings(Path(args.clips).expanduser(), args.clips_n, args.real_seconds)))
    if args.real:
        groups.append(("real recorded voices (asterisk prompts)", build_real_meetings(args.real, args.real_seconds)))
    if args.real_wide:
        groups.append(("real wideband voices (ktuberling words)", build_wide_meetings(args.real_wide, args.real_seconds)))
    if not groups:
        raise SystemExit(f"no meetings: {mdir} has no audio with .rttm, and neither --real nor --real-wide was given")
    if args.oracle_noise is not None:
        model = None
        extract = oracle_extractor(args, args.oracle_noise, args.oracle_outliers)
        source = f"ORACLE embeddings (noise {args.oracle_noise}, outliers {args.oracle_outliers})"
    else:
        model = load_model(args.model or DEFAULT_MODEL)
        extract = (engine_extractor if args.via == "engine" else offline_extractor)(args, config, model)
        source = (f"embeddings via {args.via}; model {args.model or 'bundled default'}"
                  f"{'; speaker model ' + args.speaker_model if args.speaker_model else ''}")
    print(f"{source}; "
          f"chunk {args.chunk_ms:.0f} ms, right {args.right_ms:.0f} ms; latency = stream position at emission "
          f"minus the reference change time")
    for name, meetings in groups:
        t0 = time.perf_counter()
        extracted = []
        for m in meetings:
            ex = extract(m)
            extracted.append(ex)
            if ex.engine_events is not None:
                # The replay of the recorded windows must be exactly what the engine emitted.
                replayed = replay(ex, config, model)
                engine = first_statements([(e.time, at) for at, e in ex.engine_events if e.from_speaker is not None])
                if [(round(t, 6), a) for t, a in engine] != [(round(t, 6), a) for t, a in replayed.changes]:
                    print(f"warning: {m.name}: engine events differ from the replay of its windows")
        audio_s = sum(len(m.audio) for m in meetings) / SR
        print(f"\n[{name}] embeddings: {time.perf_counter() - t0:.0f} s for {audio_s:.0f} s of audio")
        used = evaluate(name, meetings, extracted, config, model, args.tune, also)
        if args.rttm_dir:
            Path(args.rttm_dir).mkdir(parents=True, exist_ok=True)
            for m, ex in zip(meetings, extracted):
                with open(Path(args.rttm_dir) / f"{m.name}.rttm", "w") as f:
                    write_rttm(replay(ex, used, model).turns, m.name, f)


if __name__ == "__main__":
    main()
