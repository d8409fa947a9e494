"""Speaker embedding sources for the tracker, and the per-stream glue the pipeline uses.

Every source turns a stream into rolling windows (``SpeakerTrackerConfig.window_s`` long,
one every ``hop_s``, ending at multiples of the hop from the stream start; the last
window of a stream, from ``finish``, may be shorter) and returns, for each, a :class:`SpeakerWindow`
``(start_s, end_s, embedding (E,) | None, speech_fraction)`` for
``decoders.speaker.SpeakerTracker.push``. Three sources:

(a) :class:`BundledSpeakerHead` -- the bundled model's speaker head on the same encoder
    pass as the captions: the engine hands it the per-frame speaker features
    ``model.speaker_frame_features(hidden_states)`` of each chunk; every hop it pools the
    speech frames of the last window with ``model.speaker_pool``. When the model has a
    learned change detector, the same frames also give :class:`ChangeCandidate` s.
(b) :class:`XVectorSource` -- a separate ``WavLMForXVector`` checkpoint (e.g.
    microsoft/wavlm-base-plus-sv) run on the last window of 16 kHz audio every hop.
(c) :class:`FrameActivitySource` -- a ``WavLMForAudioFrameClassification`` checkpoint
    (e.g. microsoft/wavlm-base-plus-sd) run on the last window every hop; its per-frame
    sigmoid activity of the local speaker slots gives the speech fraction, picks the slot
    that is talking in the newest hop, and selects the frames whose classifier features
    are averaged into the window's embedding. The embedding is built from the frames'
    features, never from the slot index, so the arbitrary slot order of each window
    (the permutation between windows) never reaches the tracker.

Speech vs silence: a per-frame energy detector (:class:`stream.vad.EnergyVAD`) over the audio, or
the frame classifier's own activity for (c). A window's speech fraction is the mean of
its frames' speech; windows without speech carry no embedding.

A checkpoint of the wrong kind (e.g. a CTC model given as the x-vector source) raises a
ValueError naming the architecture expected and the one found.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import torch

from decoders.clustering import unit
from decoders.events import SpeakerChange
from decoders.speaker import SpeakerTracker, SpeakerTrackerConfig
from decoders.turns import Turn
from stream.change import ChangePeaks, StreamingChangeDetector
from stream.vad import EnergyVAD

SAMPLE_RATE = 16000
FRAME_SAMPLES = 320                     # conv front end stride: one frame = 20 ms
FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE


class SpeakerWindow(NamedTuple):
    """One rolling window for the tracker."""

    start_s: float
    end_s: float
    embedding: np.ndarray | None        # (E,) float32, None when the window has no speech
    speech_fraction: float              # in [0, 1]


class ChangeCandidate(NamedTuple):
    """A possible speaker change found by the bundled model's change detector, for
    ``SpeakerTracker.push_candidate`` (which decides whether the voice really changed)."""

    time_s: float                       # where the detector's probability peaks (frame centre)
    before: np.ndarray | None           # (E,) embedding of the speech before it (None: too little speech)
    after: np.ndarray | None            # (E,) embedding of the speech just after it
    probability: float                  # the detector's change probability at the peak
    second_look: bool = False           # the same candidate again, `after` from detector_second_look_s of frames


class _Look(NamedTuple):
    """A detector peak waiting for `span` frames of speech after it, to become a ChangeCandidate."""

    frame: int
    probability: float
    span: int                           # frames after the peak that this look pools
    second_look: bool = False
    before: np.ndarray | None = None    # the second look reuses the first look's `before`


class ChangePeak(NamedTuple):
    """A weaker peak of the change detector's probability (above ``detector_support``), for
    ``SpeakerTracker.push_detector_peak``: not a change by itself, but support for a window peak."""

    time_s: float
    probability: float


# ------------------------------------------------------------------------ geometry


class _Grid:
    """Window boundaries in units of `unit` samples (320 for frames, 1 for samples)."""

    def __init__(self, config: SpeakerTrackerConfig, unit: int):
        self.unit = unit
        per_s = SAMPLE_RATE / unit
        self.window = max(1, int(round(config.window_s * per_s)))
        self.hop = max(1, int(round(config.hop_s * per_s)))
        # Windows end at multiples of the hop, the first one full length: shorter windows at
        # the start of a stream give noisier embeddings that would seed the first centroid.
        self.next_end = -(-self.window // self.hop) * self.hop   # end of the next window to emit
        self.last_end = 0               # end of the last window emitted

    def due(self, available: int) -> list[tuple[int, int]]:
        """Windows [start, end) that `available` units of input complete."""
        out = []
        while self.next_end <= available:
            out.append((max(0, self.next_end - self.window), self.next_end))
            self.last_end = self.next_end
            self.next_end += self.hop
        return out

    def tail(self, available: int) -> list[tuple[int, int]]:
        """At the end of a stream: one last window ending at the end, if there is new input."""
        out = self.due(available)
        if available > self.last_end:
            out.append((max(0, available - self.window), available))
            self.last_end = available
        return out

    def seconds(self, start: int, end: int) -> tuple[float, float]:
        return start * self.unit / SAMPLE_RATE, end * self.unit / SAMPLE_RATE


def _architecture(model) -> str:
    arch = getattr(getattr(model, "config", None), "architectures", None)
    name = type(model).__name__
    return f"{name} (config architectures {list(arch)})" if arch else name


def _load(model_or_path):
    if isinstance(model_or_path, (str, Path)):
        from model import load_model
        return load_model(model_or_path)
    return model_or_path


def _check_kind(model, class_name: str, source: str) -> None:
    from model import heads
    expected = getattr(heads, class_name)
    if not isinstance(model, expected):
        raise ValueError(f"{source} needs a {class_name} checkpoint; got {_architecture(model)}")


def _frame_samples(config) -> int:
    """Total stride of the conv front end (320 for every released WavLM: 20 ms frames)."""
    return int(np.prod(config.conv_stride))


def _receptive_samples(config, frames: int) -> int:
    """Fewest samples for which the conv front end yields `frames` frames."""
    n = frames
    for k, st in reversed(list(zip(config.conv_kernel, config.conv_stride))):
        n = (n - 1) * st + k
    return n


def _param(model) -> torch.Tensor:
    return next(model.parameters())


# ------------------------------------------------------------------------ protocol


class EmbeddingSource(Protocol):
    """What the tracker glue needs from a source. Per stream; holds its own buffers."""

    config: SpeakerTrackerConfig
    needs_hidden_states: bool   # True when the engine must hand it the encoder's hidden states

    def add_audio(self, samples_16k: np.ndarray, start_sample: int) -> None:
        """Buffer audio (cheap: no model call). Samples must be contiguous from sample 0."""

    def push_audio(self, samples_16k: np.ndarray, start_sample: int) -> list[SpeakerWindow]:
        """add_audio, then every window that the audio completes."""

    def finish(self) -> list[SpeakerWindow]:
        """End of stream: the last, possibly shorter, window."""


class _AudioIntakeMixin:
    """Contiguity check + VAD shared by every source."""

    def _init_audio(self, vad: EnergyVAD | None):
        self.vad = vad if vad is not None else EnergyVAD()
        self.samples_in = 0

    def _check_contiguous(self, samples: np.ndarray, start_sample: int) -> np.ndarray:
        if start_sample != self.samples_in:
            raise ValueError(f"audio must be contiguous: expected start_sample {self.samples_in}, got {start_sample}")
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        self.samples_in += len(x)
        self.vad.push(x)
        return x


# ------------------------------------------------------------------- (a) bundled


def offline_speaker_features(model, audio: np.ndarray, block_s: float = 20.0, context_s: float = 4.0) -> torch.Tensor:
    """The bundled model's per-frame speaker features of a whole recording, (T, P).

    The recording is encoded in blocks of `block_s` with `context_s` of audio on each side
    (attention over an hour at once would be quadratic), and each block keeps only its own
    frames. For training and evaluating on long recordings; streams use ``BundledSpeakerHead``.
    """
    stride = _frame_samples(model.config)
    receptive = _receptive_samples(model.config, 1)
    frames = (len(audio) - receptive) // stride + 1
    if frames <= 0:
        return torch.zeros(0, model.config.speaker_head["proj_dim"])
    block, ctx = int(block_s * SAMPLE_RATE) // stride, int(context_s * SAMPLE_RATE) // stride
    p = _param(model)
    # The head's own precision: with a bfloat16 transformer (--bf16) the hidden states are bfloat16
    # and the head float32, as the stream's window runner casts them.
    head_dtype = _param(model.speaker_head).dtype
    out = []
    with torch.inference_mode():
        for b in range(0, frames, block):
            f0, f1 = max(0, b - ctx), min(frames, b + block + ctx)
            x = torch.from_numpy(np.ascontiguousarray(audio[f0 * stride:(f1 - 1) * stride + receptive]))
            hidden = model.wavlm(x[None].to(device=p.device, dtype=p.dtype), output_hidden_states=True).hidden_states
            feats = model.speaker_frame_features(tuple(h.to(head_dtype) for h in hidden))[0]
            out.append(feats[b - f0:b - f0 + min(block, frames - b)].float().cpu())
    return torch.cat(out)


class BundledSpeakerHead(_AudioIntakeMixin):
    """Embeddings from the bundled model's speaker head over a rolling window of frames.

    model : WavLMForCTCWithSpeaker (has ``speaker_frame_features`` and ``speaker_pool``).
    The engine calls ``add_audio`` with the stream's audio (for the energy VAD) and
    ``push_frames(features (T, P), first_frame)`` with each chunk's speaker features.
    Frames that the VAD calls silence are left out of the pooling (unless fewer than
    ``min_pool_frames`` are speech), so a window that is half pause still describes the voice.

    When the model has a change detector (config.speaker_head.change_detector) and
    ``config.change_detector`` is on, the same frames also go through it
    (stream.change.StreamingChangeDetector): each peak of its change probability becomes a
    :class:`ChangeCandidate` once ``detector_after_s`` of frames after it have arrived, with the
    embeddings of the speech before it (up to ``detector_before_s``, not before the previous
    candidate) and after it. ``push_frames`` and ``finish`` then return windows and candidates
    in the order their last frame arrived. With ``detector_sure`` > 0 each candidate comes again
    (``second_look``) once ``detector_second_look_s`` of frames after it have arrived, its
    ``after`` embedding from all of them, for the tracker to decide the candidates that half a
    second left unclear.
    """

    needs_hidden_states = True

    def __init__(self, model, config: SpeakerTrackerConfig | None = None, vad: EnergyVAD | None = None,
                 min_pool_frames: int = 10, min_candidate_frames: int = 5):
        model = _load(model)
        if not all(callable(getattr(model, m, None)) for m in ("speaker_frame_features", "speaker_pool")):
            raise ValueError("BundledSpeakerHead needs the bundled model with a speaker head "
                             f"(WavLMForCTCWithSpeaker, config.speaker_head); got {_architecture(model)}")
        self.model = model
        self.config = config or SpeakerTrackerConfig()
        self.min_pool_frames = min_pool_frames
        self.frame_samples = _frame_samples(model.config)
        self._grid = _Grid(self.config, self.frame_samples)
        self._buf: torch.Tensor | None = None       # (T_buf, P) frames [buf_start, buf_start + T_buf)
        self._buf_start = 0
        self._speech: np.ndarray = np.zeros(0, dtype=np.float32)  # explicit speech of the buffered frames, or empty
        self._init_audio(vad)
        detector = getattr(model, "change_detector", None) if self.config.change_detector else None
        self._detector = None if detector is None else StreamingChangeDetector(detector)
        frame_s = self.frame_samples / SAMPLE_RATE
        min_gap = round(self.config.detector_min_gap_s / frame_s)
        self._peaks = ChangePeaks(min(self.config.detector_threshold, self.config.detector_weak_threshold), min_gap)
        # Weaker peaks, picked on their own (a weak peak must not hide a strong one just after it).
        self._support = ChangePeaks(self.config.detector_support, min_gap) if self.config.detector_support > 0 else None
        self._support_ready: list[ChangePeak] = []
        self._before = max(1, round(self.config.detector_before_s / frame_s))
        self._after = max(1, round(self.config.detector_after_s / frame_s))
        self.min_candidate_frames = min_candidate_frames
        self._second = max(self._after + 1, round(self.config.detector_second_look_s / frame_s))
        self._looks: list[_Look] = []                   # peaks waiting for the speech after them
        self._last_candidate = 0                        # frame of the previous candidate

    @property
    def emits_candidates(self) -> bool:
        """Does this source report ChangeCandidates (the model has a change detector, and it is on)?"""
        return self._detector is not None

    def features(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Per-frame speaker features of one chunk: num_layers + 1 tensors (T, H) or (1, T, H) -> (T, P)."""
        hs = tuple(h if h.dim() == 3 else h[None] for h in hidden_states)
        with torch.inference_mode():
            return self.model.speaker_frame_features(hs)[0]

    def add_audio(self, samples_16k: np.ndarray, start_sample: int) -> None:
        self._check_contiguous(samples_16k, start_sample)

    def push_audio(self, samples_16k: np.ndarray, start_sample: int) -> list[SpeakerWindow]:
        """Audio only feeds the VAD here; windows come from ``push_frames``."""
        self.add_audio(samples_16k, start_sample)
        return []

    def push_frames(self, features, first_frame: int, speech: np.ndarray | None = None
                    ) -> list[SpeakerWindow | ChangeCandidate | ChangePeak]:
        """Add frames [first_frame, first_frame + T) and return the windows (and candidates) they complete.

        features : torch.Tensor or np.ndarray, shape = (T, P) or (1, T, P)
        speech : optional (T,) per-frame speech in [0, 1] (e.g. from the CTC posteriors);
                 default: the energy VAD of the audio given to ``add_audio``.
        """
        x = torch.as_tensor(features)
        if x.dim() == 3:
            x = x[0]
        if x.dim() != 2:
            raise ValueError(f"features must be (T, P) or (1, T, P), got {tuple(torch.as_tensor(features).shape)}")
        end = self._buf_start + (0 if self._buf is None else self._buf.shape[0])
        if first_frame != end:
            raise ValueError(f"frames must be contiguous: expected first_frame {end}, got {first_frame}")
        if speech is not None:
            speech = np.asarray(speech, dtype=np.float32).reshape(-1)
            if len(speech) != x.shape[0]:
                raise ValueError(f"speech has {len(speech)} frames for {x.shape[0]} feature frames")
            if self._buf is not None and len(self._speech) != self._buf.shape[0]:
                raise ValueError("pass speech with every push_frames call or with none")
            self._speech = np.concatenate([self._speech, speech])
        elif len(self._speech):
            raise ValueError("pass speech with every push_frames call or with none")
        self._buf = x if self._buf is None else torch.cat([self._buf, x.to(self._buf)])
        end = first_frame + x.shape[0]
        if self._detector is not None:
            self._detect(*self._detector.push(x, self._frame_speech(first_frame, end)))
        return self._emit(self._grid.due(end), end)

    def finish(self) -> list[SpeakerWindow | ChangeCandidate | ChangePeak]:
        end = self._buf_start + (0 if self._buf is None else self._buf.shape[0])
        if self._detector is not None:
            self._detect(*self._detector.finish(), final=True)
        return self._emit(self._grid.tail(end), end, final=True)

    def _detect(self, first: int, probs: np.ndarray, final: bool = False) -> None:
        """Peak-pick the detector's probabilities of frames [first, first + len(probs))."""
        peaks = self._peaks.push(first, probs) + (self._peaks.finish() if final else [])
        self._looks += [_Look(t, p, self._after) for t, p in peaks]
        if self._support is not None:
            peaks = self._support.push(first, probs) + (self._support.finish() if final else [])
            self._support_ready += [ChangePeak(self._seconds(t), p) for t, p in peaks]

    def _frame_speech(self, start: int, end: int) -> np.ndarray:
        if len(self._speech):
            return self._speech[start - self._buf_start: end - self._buf_start]
        return self.vad.speech_of_frames(start, end, self.frame_samples)

    def _pool(self, start: int, end: int, mask: np.ndarray) -> np.ndarray:
        """Embedding (E,) of the buffered frames [start, end) where mask (end - start,) is True."""
        frames = self._buf[start - self._buf_start: end - self._buf_start]               # (W, P)
        with torch.inference_mode():
            m = torch.from_numpy(mask)[None].to(frames.device)
            return self.model.speaker_pool(frames[None], m)[0].float().cpu().numpy()     # (E,)

    def _window(self, start: int, end: int) -> SpeakerWindow:
        s0, s1 = self._grid.seconds(start, end)
        speech = self._frame_speech(start, end)
        frac = float(speech.mean()) if len(speech) else 0.0
        mask = speech >= 0.5
        if not mask.any():
            return SpeakerWindow(s0, s1, None, frac)
        if mask.sum() < self.min_pool_frames:
            mask[:] = True
        return SpeakerWindow(s0, s1, self._pool(start, end, mask), frac)

    def _speech_embedding(self, start: int, end: int) -> np.ndarray | None:
        """Embedding of the speech frames in [start, end); None with fewer than min_candidate_frames."""
        if end <= start:
            return None
        mask = self._frame_speech(start, end) >= 0.5
        return self._pool(start, end, mask) if mask.sum() >= self.min_candidate_frames else None

    def _candidate(self, look: _Look, end: int) -> ChangeCandidate:
        frame = look.frame
        before = look.before
        if not look.second_look:
            before = self._speech_embedding(max(self._last_candidate, frame - self._before, self._buf_start), frame)
            self._last_candidate = frame
        after = self._speech_embedding(frame, min(frame + look.span, end))
        return ChangeCandidate(self._seconds(frame), before, after, look.probability, look.second_look)

    def _seconds(self, frame: int) -> float:
        """Centre of a frame, in seconds from stream start."""
        return (frame + 0.5) * self.frame_samples / SAMPLE_RATE

    def _emit(self, windows: list[tuple[int, int]], end: int, final: bool = False
              ) -> list[SpeakerWindow | ChangeCandidate | ChangePeak]:
        """The support peaks found, the windows [start, end) due and the candidates whose after span
        is complete (all at the end of the stream), ordered by the frame that completed them; then
        trims the buffer."""
        # Support peaks first: they are known as soon as their look-ahead is (before any window that uses them).
        ready = [(0, 0, peak) for peak in self._support_ready]
        self._support_ready = []
        ready += [(w_end, 0, self._window(start, w_end)) for start, w_end in windows]
        looks, self._looks = self._looks, []
        for look in looks:      # a first look due now appends its second look to `looks`
            if not (final or look.frame + look.span <= end):
                self._looks.append(look)
                continue
            candidate = self._candidate(look, end)
            # Completed on the same frame: first looks before second looks.
            ready.append((min(look.frame + look.span, end), 1 + look.second_look, candidate))
            if not look.second_look and self.config.detector_sure > 0:
                looks.append(look._replace(span=self._second, second_look=True, before=candidate.before))
        ready.sort(key=lambda r: (r[0], r[1]))
        # Keep only the frames that the next window (or the last window's worth, for finish()) and the
        # next candidates still need.
        buffered_end = self._buf_start + (0 if self._buf is None else self._buf.shape[0])
        keep_from = min(self._grid.next_end, buffered_end) - self._grid.window
        if self._detector is not None:
            keep_from = min([keep_from, self._peaks.decided_until - self._before]
                            + [look.frame - (0 if look.second_look else self._before) for look in self._looks])
        keep_from = max(self._buf_start, keep_from)
        if self._buf is not None and keep_from > self._buf_start:
            drop = keep_from - self._buf_start
            self._buf = self._buf[drop:]
            if len(self._speech):
                self._speech = self._speech[drop:]
            self._buf_start = keep_from
        return [item for _, _, item in ready]


# -------------------------------------------------------------- audio windowing


class _AudioWindowSource(_AudioIntakeMixin):
    """Rolling 16 kHz buffer; subclasses embed one window of audio."""

    needs_hidden_states = False

    def __init__(self, config: SpeakerTrackerConfig | None, vad: EnergyVAD | None):
        self.config = config or SpeakerTrackerConfig()
        self._grid = _Grid(self.config, 1)
        self._audio = np.zeros(0, dtype=np.float32)   # samples [audio_start, samples_in)
        self._audio_start = 0
        self._init_audio(vad)

    def add_audio(self, samples_16k: np.ndarray, start_sample: int) -> None:
        x = self._check_contiguous(samples_16k, start_sample)
        self._audio = np.concatenate([self._audio, x])

    def push_audio(self, samples_16k: np.ndarray, start_sample: int) -> list[SpeakerWindow]:
        self.add_audio(samples_16k, start_sample)
        return self.windows()

    def windows(self, until_s: float | None = None) -> list[SpeakerWindow]:
        """Run the model on every buffered window that ends by `until_s` (default: all)."""
        available = self.samples_in
        if until_s is not None:
            available = min(available, int(round(until_s * SAMPLE_RATE)))
        return self._emit(self._grid.due(available))

    def finish(self) -> list[SpeakerWindow]:
        return self._emit(self._grid.tail(self.samples_in))

    def _emit(self, windows: list[tuple[int, int]]) -> list[SpeakerWindow]:
        out = [self._window(start, end) for start, end in windows]
        # Keep what the next window needs, or the last window's worth if the stream ends first.
        keep_from = max(self._audio_start, min(self._grid.next_end, self.samples_in) - self._grid.window)
        self._audio = self._audio[keep_from - self._audio_start:]
        self._audio_start = keep_from
        return out

    def _window(self, start: int, end: int) -> SpeakerWindow:
        raise NotImplementedError

    def _run(self, audio: np.ndarray, output_hidden_states: bool = False):
        p = _param(self.model)
        x = torch.from_numpy(np.ascontiguousarray(audio))[None].to(device=p.device, dtype=p.dtype)
        if self.normalize:
            # Zero-mean unit-variance per window, as Wav2Vec2FeatureExtractor(do_normalize=True).
            x = (x - x.mean()) / torch.sqrt(x.var(correction=0) + 1e-7)
        with torch.inference_mode():
            return self.model(x, output_hidden_states=output_hidden_states)


# ------------------------------------------------------------------- (b) x-vector


class XVectorSource(_AudioWindowSource):
    """Embeddings of a WavLMForXVector checkpoint (e.g. microsoft/wavlm-base-plus-sv).

    Each window runs the model on the window's speech span (leading and trailing
    silence trimmed by the energy VAD, if at least `min_speech_s` of it remains).
    normalize : per-window zero-mean unit-variance input, for checkpoints whose feature
                extractor has ``do_normalize=true``.
    """

    def __init__(self, model, config: SpeakerTrackerConfig | None = None, vad: EnergyVAD | None = None,
                 normalize: bool = False, min_speech_s: float = 0.5):
        model = _load(model)
        _check_kind(model, "WavLMForXVector", "XVectorSource")
        self.model = model
        self.normalize = normalize
        self.min_speech_frames = max(1, int(round(min_speech_s / FRAME_SECONDS)))
        # Shortest input that leaves one frame after the TDNN layers' context.
        cfg = model.config
        frames = 1 + sum(d * (k - 1) for k, d in zip(cfg.tdnn_kernel, cfg.tdnn_dilation))
        self.min_samples = _receptive_samples(cfg, frames)
        super().__init__(config, vad)

    def _window(self, start: int, end: int) -> SpeakerWindow:
        s0, s1 = self._grid.seconds(start, end)
        f0, f1 = start // FRAME_SAMPLES, max(start // FRAME_SAMPLES + 1, end // FRAME_SAMPLES)
        speech = self.vad.speech(f0, f1)
        frac = float(speech.mean())
        if not speech.any():
            return SpeakerWindow(s0, s1, None, frac)
        audio = self._audio[start - self._audio_start: end - self._audio_start]
        idx = np.flatnonzero(speech >= 0.5)
        if idx[-1] - idx[0] + 1 >= self.min_speech_frames:
            audio = audio[idx[0] * FRAME_SAMPLES: (idx[-1] + 1) * FRAME_SAMPLES]
        if len(audio) < self.min_samples:
            return SpeakerWindow(s0, s1, None, frac)
        e = self._run(audio).embeddings[0]
        return SpeakerWindow(s0, s1, e.float().cpu().numpy(), frac)


# --------------------------------------------------------- (c) frame activity


class FrameActivitySource(_AudioWindowSource):
    """Speaker windows from a WavLMForAudioFrameClassification checkpoint (e.g. wavlm-base-plus-sd).

    Per window: sigmoid activity (T, K) of the K local speaker slots. Speech fraction =
    frames with any slot above 0.5. The slot talking in the newest hop (most activity
    there) is the window's speaker; its embedding is the mean of the classifier's input
    features (weighted layer sum or last hidden state, as the head reads them) over the
    frames where that slot alone is active, minus the running mean of all frames' features
    of the stream (transformer states share a large common component that would make every
    cosine similarity near 1). Slot order is arbitrary in each window; the embedding does
    not depend on it.
    """

    def __init__(self, model, config: SpeakerTrackerConfig | None = None, vad: EnergyVAD | None = None,
                 normalize: bool = False, threshold: float = 0.5):
        model = _load(model)
        _check_kind(model, "WavLMForAudioFrameClassification", "FrameActivitySource")
        self.model = model
        self.normalize = normalize
        self.threshold = threshold
        self.min_samples = _receptive_samples(model.config, 1)
        self.frame_samples = _frame_samples(model.config)
        self._feature_sum: torch.Tensor | None = None   # sum of the newest-hop features of every window
        self._feature_count = 0
        self._counted_until = 0                          # sample up to which frames are in the sum
        super().__init__(config, vad)

    def activity(self, audio: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
        """audio (N,) -> (activity (T, K) float32 in [0, 1], classifier input features (T, H))."""
        from model.heads import weighted_layer_sum
        out = self._run(audio, output_hidden_states=True)
        with torch.inference_mode():
            if getattr(self.model, "layer_weights", None) is not None:
                features = weighted_layer_sum(out.hidden_states, self.model.layer_weights)[0]
            else:
                features = out.last_hidden_state[0]
        act = torch.sigmoid(out.logits[0].float()).cpu().numpy()
        return act, features.float()

    def _window(self, start: int, end: int) -> SpeakerWindow:
        s0, s1 = self._grid.seconds(start, end)
        audio = self._audio[start - self._audio_start: end - self._audio_start]
        if len(audio) < self.min_samples:           # shorter than one conv receptive field
            return SpeakerWindow(s0, s1, None, 0.0)
        act, features = self.activity(audio)
        # Each frame enters the running mean once: through the first window that ends after it.
        fresh = max(1, min(act.shape[0], round((end - max(start, self._counted_until)) / self.frame_samples)))
        self._counted_until = end
        new_sum = features[-fresh:].sum(dim=0)
        self._feature_sum = new_sum if self._feature_sum is None else self._feature_sum + new_sum
        self._feature_count += fresh
        newest = max(1, min(act.shape[0], int(round(self.config.hop_s * SAMPLE_RATE / self.frame_samples))))
        on = act >= self.threshold                  # (T, K)
        frac = float(on.any(axis=1).mean())
        if not on.any():
            return SpeakerWindow(s0, s1, None, frac)
        slot = int(np.argmax(act[-newest:].sum(axis=0)))
        frames = on[:, slot] & (on.sum(axis=1) == 1)
        if not frames.any():
            frames = on[:, slot]
        if not frames.any():                        # the newest hop's slot is below threshold everywhere
            frames = on.any(axis=1)
        e = features[torch.from_numpy(frames)].mean(dim=0) - self._feature_sum / self._feature_count
        return SpeakerWindow(s0, s1, e.cpu().numpy(), frac)


# ------------------------------------------------------------------ engine glue


class StreamSpeakers:
    """One stream's source + tracker, as the pipeline drives them.

    push_audio(audio16, start_sample): cheap, from ``Stream.accept``.
    push_window(output: stream.window.WindowOutput, log_probs) -> list[SpeakerChange]: after each
        transformer window; audio sources run their model here (off the event loop, in step
        with the captions: windows up to the end of the window's emitted frames).
    finish() -> list[SpeakerChange]; label_for(start, end); turns().
    """

    def __init__(self, source: EmbeddingSource, tracker: SpeakerTracker, frame_seconds: float = FRAME_SECONDS):
        self.source = source
        self.tracker = tracker
        self.frame_seconds = frame_seconds      # duration of one frame of the pipeline's (CTC) model

    @property
    def needs_hidden_states(self) -> bool:
        return self.source.needs_hidden_states

    def push_audio(self, samples_16k: np.ndarray, start_sample: int) -> None:
        before = self.source.vad.frames
        self.source.add_audio(samples_16k, start_sample)
        after = self.source.vad.frames
        if after > before:
            # The VAD's 20 ms decisions also give the turns their boundaries (RTTM, labels of finals).
            self.tracker.push_speech(before, FRAME_SECONDS, self.source.vad.speech(before, after))

    def push_window(self, output, log_probs: np.ndarray | None = None) -> list[SpeakerChange]:
        if isinstance(self.source, BundledSpeakerHead):
            if output.hidden_states is None:
                raise ValueError("the bundled speaker head needs the window's hidden states (need_hidden_states=True)")
            windows = self.source.push_frames(self.source.features(output.hidden_states), output.window.emit_start)
        else:
            windows = self.source.windows(until_s=output.window.emit_end * self.frame_seconds)
        return self._track(windows)

    def finish(self) -> list[SpeakerChange]:
        return self._track(self.source.finish()) + self.tracker.finish()

    def label_for(self, start_s: float, end_s: float) -> str | None:
        return self.tracker.label_for(start_s, end_s)

    def turns(self) -> list[Turn]:
        return self.tracker.turns()

    def _track(self, items: list[SpeakerWindow | ChangeCandidate | ChangePeak]) -> list[SpeakerChange]:
        return [ev for item in items for ev in feed_tracker(self.tracker, item)]


def feed_tracker(tracker: SpeakerTracker, item: SpeakerWindow | ChangeCandidate | ChangePeak) -> list[SpeakerChange]:
    """Hand one window, change candidate or support peak of a source to the tracker."""
    if isinstance(item, ChangeCandidate):
        return tracker.push_candidate(item.time_s, item.before, item.after, item.probability, item.second_look)
    if isinstance(item, ChangePeak):
        tracker.push_detector_peak(item.time_s, item.probability)
        return []
    return tracker.push(item.start_s, item.end_s, item.embedding, item.speech_fraction)


def new_tracker(source: EmbeddingSource, config: SpeakerTrackerConfig,
                enrolled: dict[str, np.ndarray] | None = None) -> SpeakerTracker:
    """The tracker for a source (told whether change candidates will come), knowing the enrolled voices."""
    return SpeakerTracker(config, candidates=getattr(source, "emits_candidates", False), enrolled=enrolled)


class SpeakerSourceFactory:
    """Makes a StreamSpeakers per stream; shared by a pipeline (holds only the model)."""

    def __init__(self, kind: type, model, frame_seconds: float = FRAME_SECONDS, **source_kwargs):
        self.kind = kind
        self.model = model
        self.frame_seconds = frame_seconds
        self.source_kwargs = source_kwargs

    def new_stream(self, tracker_config: SpeakerTrackerConfig | None = None,
                   enrolled: dict[str, np.ndarray] | None = None) -> StreamSpeakers:
        """enrolled: name -> embedding (E,) from ``enrolment_embedding``: these voices get their names."""
        config = tracker_config or SpeakerTrackerConfig()
        source = self.kind(self.model, config, **self.source_kwargs)
        return StreamSpeakers(source, new_tracker(source, config, enrolled), self.frame_seconds)

    def enrolment_embedding(self, audio_16k: np.ndarray, tracker_config: SpeakerTrackerConfig | None = None
                            ) -> np.ndarray:
        """The voice in a recording of one speaker: the unit mean (E,) of its speech windows' embeddings,
        made as a stream's windows are (same window length and hop, VAD, pooling), so that the tracker
        can compare it with a stream's windows.

        audio_16k: float32 (N,) at 16 kHz. Raises ValueError for a frame-classification speaker model
        (its window features are relative to the stream they come from, not a voice's own) and for a
        recording without a speech window.
        """
        if self.kind is FrameActivitySource:
            raise ValueError("enrolling a speaker needs the bundled model's speaker head or an x-vector "
                             "--speaker-model: a frame-classification model's windows describe the local "
                             "speaker slots of one stream, not a voice that another recording can be matched to")
        config = dataclasses.replace(tracker_config or SpeakerTrackerConfig(), change_detector=False)
        source = self.kind(self.model, config, **self.source_kwargs)
        audio_16k = np.ascontiguousarray(audio_16k, dtype=np.float32)
        if isinstance(source, BundledSpeakerHead):
            source.add_audio(audio_16k, 0)
            windows = source.push_frames(offline_speaker_features(self.model, audio_16k), 0) + source.finish()
        else:
            windows = source.push_audio(audio_16k, 0) + source.finish()
        # Whole windows only: the shorter last one of a stream describes a voice less surely, and a
        # recording shorter than a window is too little to know a voice by.
        embeddings = [unit(w.embedding) for w in windows if isinstance(w, SpeakerWindow)
                      and config.is_speech(w.embedding, w.speech_fraction) and w.end_s - w.start_s >= config.window_s - 1e-6]
        if not embeddings:
            raise ValueError(f"no speech found in the {len(audio_16k) / SAMPLE_RATE:.2f} s of the recording "
                             f"(it needs at least a window of {config.window_s:.2f} s that is mostly speech)")
        return unit(np.mean(np.stack(embeddings), axis=0))


def speaker_source_factory(model, speaker_model=None, **source_kwargs) -> SpeakerSourceFactory | None:
    """Pick the embedding source for a pipeline.

    speaker_model : a WavLMForXVector or WavLMForAudioFrameClassification (or a path to one)
                    run beside the CTC model; None: the CTC model's own speaker head.
    Returns None when there is nothing to track speakers with (a CTC model without a speaker
    head and no speaker model); a speaker model of another kind raises ValueError.
    """
    frame_seconds = _frame_samples(model.config) / SAMPLE_RATE
    if speaker_model is not None:
        from model import heads
        speaker_model = _load(speaker_model)
        if isinstance(speaker_model, heads.WavLMForXVector):
            return SpeakerSourceFactory(XVectorSource, speaker_model, frame_seconds, **source_kwargs)
        if isinstance(speaker_model, heads.WavLMForAudioFrameClassification):
            return SpeakerSourceFactory(FrameActivitySource, speaker_model, frame_seconds, **source_kwargs)
        raise ValueError("a speaker model must be a WavLMForXVector or WavLMForAudioFrameClassification "
                         f"checkpoint; got {_architecture(speaker_model)}")
    if callable(getattr(model, "speaker_frame_features", None)):
        return SpeakerSourceFactory(BundledSpeakerHead, model, frame_seconds, **source_kwargs)
    return None
