"""The pipeline that turns live audio into caption and speaker events.

One :class:`Pipeline` holds the model and everything shared (the relative-position bias
cache, the beam-search decoder); each :meth:`Pipeline.new_stream` returns a
:class:`Stream` that owns all of its own state, so many streams share one model::

    pipe = Pipeline.from_pretrained()          # the bundled default model
    s = pipe.new_stream()
    events = s.feed(samples, sample_rate)      # int16/float, mono or (n, channels)
    events += s.finish()

A stream's audio goes: intake (to float32 16 kHz) -> incremental conv encoder ->
feature projection -> window scheduler -> transformer (``Pipeline.run_pending``, which
batches the ready windows of many streams) -> CTC log-probs -> incremental decoder
(partials, endpointed finals) and, when the model has a speaker head or a speaker model is
given, speaker tracking (speaker_change events, labels on finals).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from bisect import bisect_left
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from decoders.beam import BeamFinaliser
from decoders.ctc import Vocabulary
from decoders.endpoint import EndpointConfig
from decoders.events import Event, Final
from decoders.speaker import SpeakerTrackerConfig
from decoders.transcriber import PendingFinal, SegmentTranscriber, coalesce_partials
from model import load_model
from model.linear import set_packed_weights, to_plain_linear, without_onednn
from stream.audio import AudioIntake
from stream.encoder import IncrementalConvEncoder
from stream.final_pass import FinalPass
from stream.window import TransformerState, WindowConfig, WindowRunner, next_window

SAMPLE_RATE = 16000

#: Arrival times kept per stream (one per accepted block) for the events' latency.
ARRIVALS_KEPT = 2000

#: The bundled default model, trained by train/ on synthetic voices.
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "model" / "default"


@dataclass(frozen=True)
class StreamConfig:
    """How every stream of a pipeline is processed."""

    chunk_ms: float = 640.0          # audio made final by each transformer window
    left_ms: float = 2000.0          # left context of each window
    right_ms: float = 320.0          # lookahead: adds this much latency
    mode: str = "cached"             # "cached" (reuse left keys/values) or "recompute"
    min_silence_s: float = 0.5       # blank run after speech that ends a segment
    max_segment_s: float = 15.0      # a segment is cut after this long regardless
    beam: bool = True                # finalise segments with beam search (else greedy)
    beam_width: int = 32
    hotwords: tuple[str, ...] = ()
    kenlm_path: str | None = None
    lm_weight: float = 0.5           # KenLM weight in the beam search (pyctcdecode's alpha)
    word_bonus: float = 1.0          # per-word score bonus with KenLM (pyctcdecode's beta)
    final_pass: bool = True          # finals from the model run offline over each closed segment
                                     # (stream/final_pass.py); False: from the streamed log-probs
    # Group-norm front ends (the bundled model, base-style checkpoints): the first this-many ms of
    # a stream share one set of normalisation statistics (stream/encoder.py). Longer brings the
    # partials closer to offline (these statistics are part of their drift) but holds a stream's
    # first window back until then: measured in README, "Where the partials' drift comes from".
    group_norm_warmup_ms: float = 1000.0

    def __post_init__(self) -> None:
        if not self.group_norm_warmup_ms >= 0:
            raise ValueError(f"group_norm_warmup_ms must be >= 0, got {self.group_norm_warmup_ms}")
        self.window()   # a window that cannot run is refused here, before a model is loaded for it

    def window(self) -> WindowConfig:
        return WindowConfig.from_ms(self.chunk_ms, self.left_ms, self.right_ms, self.mode)


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """int8 dynamic quantization of every Linear layer (weights int8, activations quantized per call)."""
    import warnings

    with warnings.catch_warnings():
        # torch.ao's eager quantization is deprecated in favour of torchao, which is not a
        # dependency here; it still works on the CPU build we pin.
        warnings.simplefilter("ignore")
        # Exact-type matching: our oneDNN Linear (model.linear) goes back to nn.Linear first.
        quantized = torch.ao.quantization.quantize_dynamic(to_plain_linear(copy.deepcopy(model)), {torch.nn.Linear},
                                                           dtype=torch.qint8, inplace=True)
    quantized.vocab = getattr(model, "vocab", None)
    return quantized


def bf16_transformer(model: torch.nn.Module) -> torch.nn.Module:
    """Run the transformer (positional conv, layers, their caches) in bfloat16, in place.

    The conv feature encoder (its streaming group-norm statistics are long sums), the feature
    projection and the heads stay float32; the window runner casts at both ends. On a CPU with
    AVX512-BF16 a (48 x 768) @ (768 x 3072) product runs ~2.8x faster than in float32
    (measured here); the cost in accuracy is measured by ``bench/rtf.py`` and ``bench/geometry.py``.
    Without those instructions bfloat16 is emulated and slower than float32: a warning says so.
    """
    if next(model.parameters()).device.type == "cpu" and not _cpu_has_bf16():
        import warnings
        warnings.warn("this CPU has no BF16 instructions (AVX512-BF16 or AMX): the bfloat16 transformer "
                      "runs emulated, slower than float32; --int8 is the faster choice here "
                      "(measure with bench/rtf.py)",
                      stacklevel=2)
    model.wavlm.encoder.to(torch.bfloat16)
    return model


def _cpu_has_bf16() -> bool:
    cpu = torch.cpu
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


NO_SPEAKER_TRACKING = ("enrolling a speaker needs speaker tracking: this pipeline has none (a CTC model "
                       "without a speaker head and no speaker_model, or speakers=False)")


class Pipeline:
    """A loaded CTC model plus the per-shape caches shared by all of its streams."""

    def __init__(self, model: torch.nn.Module, config: StreamConfig = StreamConfig(),
                 speaker_source_factory=None, speaker_tracker_config=None):
        if not hasattr(model, "lm_head") or getattr(model, "vocab", None) is None:
            name = type(model).__name__
            raise ValueError(f"the pipeline needs a CTC model with a vocabulary (WavLMForCTC); got {name}")
        backbone = model.wavlm
        if backbone.config.add_adapter:
            raise ValueError("checkpoints with adapter layers (add_adapter=true) run offline only; "
                             "streaming them is not supported")
        self.model = model.eval()
        self.config = config
        self.window_config = config.window()
        self.vocabulary = Vocabulary.from_tokens(model.vocab)
        warmup_samples = config.group_norm_warmup_ms * SAMPLE_RATE / 1000
        conv0_stride = backbone.feature_extractor.conv_layers[0].stride          # the encoder counts conv-0 frames
        self.conv = IncrementalConvEncoder(backbone.feature_extractor, backbone.config.feat_extract_norm,
                                           warmup_frames=round(warmup_samples / conv0_stride))
        self.runner = WindowRunner(backbone, self.window_config)
        self.endpoint = EndpointConfig(min_silence_s=config.min_silence_s,
                                       max_segment_s=config.max_segment_s)
        self.finaliser = None
        if config.beam:
            self.finaliser = BeamFinaliser(self.vocabulary, kenlm_path=config.kenlm_path,
                                           hotwords=config.hotwords, beam_width=config.beam_width,
                                           alpha=config.lm_weight, beta=config.word_bonus)
        self.speaker_source_factory = speaker_source_factory
        self.speaker_tracker_config = speaker_tracker_config
        self.enrolled: dict[str, np.ndarray] = {}    # name -> voice embedding (E,), see enrol()
        self._dtype = next(model.parameters()).dtype
        self._device = next(model.parameters()).device

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | Path | None = None, *, device: str = "cpu",
                        speaker_model: str | Path | None = None, speakers: bool = True,
                        speaker_tracker_config=None, int8: bool = False, bf16: bool = False,
                        packed_weights: bool = True, **stream_config) -> "Pipeline":
        """Load a CTC checkpoint (default: the bundled model) and build a pipeline.

        speaker_model: an x-vector or frame-classification checkpoint for speaker
        tracking beside the CTC model; without it, the CTC model's own speaker head is
        used when it has one (the bundled model does). ``speakers=False`` turns tracking off.
        int8: int8 dynamic quantization of the Linear layers (CPU; faster, slightly less
        accurate: ``bench/rtf.py`` measures both sides).
        bf16: the transformer in bfloat16 (CPUs with AVX512-BF16 or AMX; see bf16_transformer).
        packed_weights: keep a copy of the Linear weights in oneDNN's layout (the stream's
        products 1.15-1.35x faster, the same results; see model.linear). False keeps one copy
        (saves a base-size model's 340 MB).
        stream_config: fields of :class:`StreamConfig` (chunk_ms, left_ms, right_ms, mode, ...).
        """
        if int8 and bf16:
            raise ValueError("int8 and bf16 are two ways to speed up the same layers: choose one")
        model = load_model(DEFAULT_MODEL if path_or_hub_id is None else path_or_hub_id, device=device)
        if int8:
            model = quantize_int8(model)
        if bf16:
            model = bf16_transformer(model)
        set_packed_weights(model, packed_weights)
        factory = None
        if speakers:
            from stream.speakers import speaker_source_factory
            extra = None
            if speaker_model is not None:
                extra = set_packed_weights(load_model(speaker_model, device=device), packed_weights)
            factory = speaker_source_factory(model, extra)
        return cls(model, StreamConfig(**stream_config), factory, speaker_tracker_config)

    def enrol(self, name: str, samples, sample_rate: int) -> None:
        """Teach the speaker tracker a voice: streams created from now on label it ``name`` (in
        finals, speaker_change events, turns) instead of S1, S2, ...; voices nobody enrolled
        still get S1, S2, ... A few seconds of that speaker alone, any rate, int or float, mono
        or (n, channels). Enrolling a name again replaces its voice.

        Raises ValueError for a bad name, for more speakers than ``max_speakers`` and as
        ``voice_embedding`` does; AudioFormatError for bad audio.
        """
        self.check_enrolment(name, self.enrolled)
        self.enrolled[name] = self.voice_embedding(samples, sample_rate)

    def check_enrolment(self, name: str, enrolled: dict[str, np.ndarray]) -> None:
        """ValueError unless ``name`` can join ``enrolled`` (a valid name, room under max_speakers)."""
        from decoders.clustering import check_speaker_name

        check_speaker_name(name)
        if self.speaker_source_factory is None:
            raise ValueError(NO_SPEAKER_TRACKING)
        cap = (self.speaker_tracker_config or SpeakerTrackerConfig()).max_speakers
        if name not in enrolled and len(enrolled) >= cap:
            known = ", ".join(enrolled)
            raise ValueError(f"cannot enrol {name!r}: max_speakers (--max-speakers) is {cap}, and {known} "
                             f"{'is' if len(enrolled) == 1 else 'are'} enrolled already")

    def voice_embedding(self, samples, sample_rate: int) -> np.ndarray:
        """The voice of a recording of one speaker, as the speaker tracker knows voices: (E,) unit vector.

        samples: any rate, int or float, mono or (n, channels). Needs speaker tracking with a
        speaker-embedding model (the bundled model's head or an x-vector ``speaker_model``);
        raises ValueError otherwise and for a recording without speech.
        """
        if self.speaker_source_factory is None:
            raise ValueError(NO_SPEAKER_TRACKING)
        intake = AudioIntake(SAMPLE_RATE)
        audio = np.concatenate([intake.push(samples, sample_rate), intake.flush()])
        return self.speaker_source_factory.enrolment_embedding(audio, self.speaker_tracker_config)

    def new_stream(self, keep_log_probs: bool = False, defer_finals: bool = False,
                   enrolled: dict[str, np.ndarray] | None = None) -> "Stream":
        """A fresh stream. keep_log_probs: also keep every chunk's CTC log-probs
        (``Stream.log_probs``), for measuring the stream against the offline model.
        defer_finals: the stream's events hold a :class:`PendingFinal` where a Final is due; the
        caller runs ``pending.compute()`` (any thread) and hands the result to
        ``Stream.complete_final`` (the stream's own thread). The server does, so that one
        session's second pass and beam search do not hold back every other session's partials.
        enrolled: name -> ``voice_embedding`` of voices this stream alone knows, beside the
        pipeline's own (``enrol``); a name in both is this stream's voice."""
        return Stream(self, keep_log_probs, defer_finals, enrolled)

    @torch.inference_mode()
    def offline_log_probs(self, audio: np.ndarray) -> np.ndarray:
        """CTC log-probs (T, V) of the model run offline over 16 kHz float audio (N,): the finals' second pass.

        oneDNN is off for it: every segment has another length, and oneDNN's convolutions keep
        per-shape state, so a stream's memory grew with each new segment length (200 lengths of
        1-19 s: RSS 253 -> 955 MB with it, 253 -> 315-356 MB without; the conv front end runs
        about a third slower). The streaming windows keep oneDNN: their shapes repeat. Off for this
        thread only (``without_onednn``): the server runs this pass on its finals thread while its
        inference thread runs windows.
        """
        x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None].to(self._device)
        with without_onednn():
            hidden = self.model.wavlm(x).last_hidden_state[0]
        return torch.log_softmax(self.model.lm_head(hidden.float()).float(), dim=-1).cpu().numpy()

    def streaming_log_probs(self, audio: np.ndarray, sample_rate: int = SAMPLE_RATE,
                            block: int = 1600) -> np.ndarray:
        """CTC log-probs (T, V) of ``audio`` fed through a fresh stream in blocks of ``block`` samples."""
        stream = self.new_stream(keep_log_probs=True)
        for i in range(0, len(audio), block):
            stream.accept(audio[i:i + block], sample_rate)
            self.run_pending([stream])
        stream.finish()
        return stream.log_probs

    def run_pending(self, streams: list["Stream"]) -> list[list[Event]]:
        """Run every ready window of the given streams, batching windows of one shape.

        Returns the events of each stream, in the order of ``streams``. If decoding one
        stream's window raises, the exception propagates, and the events the other streams
        produced in this call are kept in those streams and returned by their next call
        (``run_pending`` or ``finish``): a failing stream never loses another's transcript.
        """
        while True:
            ready = []
            for i, s in enumerate(streams):
                window = s._next_window()
                if window is not None:
                    ready.append((i, window))
            if not ready:
                return [s._take_undelivered() for s in streams]
            groups = defaultdict(list)
            for i, window in ready:
                groups[self.runner.shape_key(streams[i]._tf, window)].append((i, window))
            for members in groups.values():
                batch = [streams[i] for i, _ in members]
                outputs = self.runner.run([s._tf for s in batch], [w for _, w in members],
                                          need_hidden_states=any(s._needs_hidden for s in batch))
                for (i, _), (output, state) in zip(members, outputs):
                    streams[i]._undelivered.extend(streams[i]._consume(output, state))


class Stream:
    """One live audio stream: its own intake, encoder, transformer and decoder state."""

    def __init__(self, pipeline: Pipeline, keep_log_probs: bool = False, defer_finals: bool = False,
                 enrolled: dict[str, np.ndarray] | None = None):
        self.pipeline = pipeline
        self.defer_finals = defer_finals
        self._kept: list[np.ndarray] | None = [] if keep_log_probs else None
        self._undelivered: list[Event] = []        # produced, not yet returned to the caller
        self._intake = AudioIntake(SAMPLE_RATE)
        self._conv = pipeline.conv.init_state(pipeline._dtype, pipeline._device)
        hidden = pipeline.model.wavlm.config.hidden_size
        self._tf: TransformerState = pipeline.runner.initial_state(hidden, pipeline.runner.dtype,
                                                                    pipeline._device)
        self._final_pass = None
        if pipeline.config.final_pass:
            self._final_pass = FinalPass(pipeline.offline_log_probs, pipeline.window_config.left,
                                         pipeline.conv.total_stride, pipeline.conv.receptive_field)
        # Always deferred inside: _stamp labels each PendingFinal when its segment closes, so a
        # final's speaker does not depend on when (or on which thread) it was computed.
        self._transcriber = SegmentTranscriber(pipeline.vocabulary, pipeline.endpoint,
                                               pipeline.finaliser, self._final_pass, defer_finals=True)
        self._speakers = None
        if pipeline.speaker_source_factory is not None:
            self._speakers = pipeline.speaker_source_factory.new_stream(pipeline.speaker_tracker_config,
                                                                        {**pipeline.enrolled, **(enrolled or {})})
        self._needs_hidden = self._speakers is not None and self._speakers.needs_hidden_states
        self._samples_in = 0                       # 16 kHz samples accepted so far
        self._unencoded: list[torch.Tensor] = []   # accepted audio not yet through the conv encoder
        self._arrivals: list[tuple[int, float]] = []  # (16 kHz sample count, wall time)
        self._end_of_stream = False
        self._finished = False

    # -- audio in ---------------------------------------------------------------------

    def accept(self, samples, sample_rate: int, arrival_time: float | None = None) -> None:
        """Take audio (numpy int16/float, (n,) or (n, channels)); queue the windows it completes.

        Cheap (intake; the conv encoder and feature projection once the audio completes
        the next window's frames); the transformer runs in
        :meth:`Pipeline.run_pending`. Raises ``AudioFormatError`` for bad audio, which
        leaves the stream as it was.
        """
        if self._finished:
            raise RuntimeError("stream already finished; start a new stream")
        audio16 = self._intake.push(samples, sample_rate)
        self._ingest(audio16, time.monotonic() if arrival_time is None else arrival_time)

    def _ingest(self, audio16: np.ndarray, arrival_time: float) -> None:
        if audio16.size == 0:
            return
        # Our own copy: float32 16 kHz mono comes through the intake as the caller's array, and the
        # encoder (which waits for a window's worth) and the second pass read it later; a caller
        # may reuse its buffer for the next block (a recording loop does).
        audio16 = np.array(audio16, dtype=np.float32)
        x = torch.from_numpy(audio16)
        start_sample = self._samples_in
        self._samples_in += x.shape[0]
        self._arrivals.append((self._samples_in, arrival_time))
        if len(self._arrivals) > 2 * ARRIVALS_KEPT:
            # Events only refer to recent audio: keep memory flat on hours-long streams.
            del self._arrivals[:-ARRIVALS_KEPT]
        self._unencoded.append(x)
        if self._final_pass is not None:
            self._final_pass.push(audio16)
        # The conv encoder runs once the audio completes the next window's frames: its frames
        # are of no use earlier, and one call over 640 ms costs much less than six over 100 ms
        # (the output is the same: the encoder is chunking-independent).
        if self._samples_in >= self.pipeline.conv.samples_for(self._frames_for_next_window()):
            self._encode_pending()
        if self._speakers is not None:
            self._speakers.push_audio(audio16, start_sample)

    def _frames_for_next_window(self) -> int:
        config = self.pipeline.window_config
        return self._tf.emitted + config.chunk + config.right

    def _encode_pending(self) -> None:
        if not self._unencoded:
            return
        x = self._unencoded[0] if len(self._unencoded) == 1 else torch.cat(self._unencoded)
        self._unencoded = []
        with torch.inference_mode():
            frames, self._conv = self.pipeline.conv.push(x.to(self.pipeline._device), self._conv)
            self._add_frames(frames)

    def _add_frames(self, frames: torch.Tensor) -> None:
        if frames.shape[0]:
            hidden = self.pipeline.model.wavlm.feature_projection(frames[None])[0]
            self._tf = self.pipeline.runner.append(self._tf, hidden)

    @property
    def pending_windows(self) -> int:
        """1 if a window is ready to run now, else 0 (a truthy count: whether more are ready is only
        known once this one has run, since each window starts where the previous one emitted)."""
        return 0 if self._next_window() is None else 1

    def _next_window(self):
        if self._finished and not self._end_of_stream:
            return None
        return next_window(self.pipeline.window_config, self._tf, self._end_of_stream)

    def feed(self, samples, sample_rate: int) -> list[Event]:
        """Accept audio and run its ready windows; returns the new events."""
        self.accept(samples, sample_rate)
        return self.pipeline.run_pending([self])[0]

    def finish(self) -> list[Event]:
        """End of stream: process the tail without lookahead and flush every pending final."""
        if self._finished:
            return []
        tail = self._intake.flush()
        self._ingest(tail, self._last_arrival())
        self._encode_pending()
        with torch.inference_mode():
            frames, self._conv = self.pipeline.conv.flush(self._conv)
            self._add_frames(frames)
        self._end_of_stream = True
        events = self.pipeline.run_pending([self])[0]
        if self._final_pass is not None:
            self._final_pass.frame_limit = None            # all the audio is there
        events += self._stamp(self._transcriber.finish())
        if self._speakers is not None:
            events += self._stamp(self._speakers.finish())
        self._finished = True
        return events

    # -- results out ------------------------------------------------------------------

    def _take_undelivered(self) -> list[Event]:
        events, self._undelivered = self._undelivered, []
        return events

    def _consume(self, output, state: TransformerState) -> list[Event]:
        """Decode one window's chunk outputs into events."""
        self._tf = state
        window = output.window
        with torch.inference_mode():
            logits = self.pipeline.model.lm_head(output.last_hidden_state)
            log_probs = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
        if self._kept is not None:
            self._kept.append(log_probs)
        # One partial per chunk: the newest text of each segment.
        if self._final_pass is not None:
            self._final_pass.frame_limit = window.end
        events = coalesce_partials(self._transcriber.push(log_probs, window.emit_start))
        if self._final_pass is not None:
            self._final_pass.keep_from_frame(self._transcriber.oldest_needed_frame)
        if self._speakers is not None:
            events = events + self._speakers.push_window(output, log_probs)
        return self._stamp(events)

    def _stamp(self, events: list) -> list:
        """Add latency (now minus arrival of the audio at the event's end) and speaker labels.

        A PendingFinal gets its speaker (from its speech as the stream saw it) and, unless the
        stream defers finals, is computed here; a deferred one is stamped by complete_final.
        """
        now = time.monotonic()
        out = []
        for event in events:
            if isinstance(event, PendingFinal):
                if self._speakers is not None:
                    event.speaker = self._speakers.label_for(event.speech_start, event.speech_end)
                out.append(event if self.defer_finals else self.complete_final(event, event.compute()))
                continue
            changes = {}
            end = getattr(event, "end", getattr(event, "time", None))
            if end is not None and getattr(event, "latency", None) is None:
                arrived = self._arrival_of(end)
                if arrived is not None:
                    changes["latency"] = round(max(0.0, now - arrived), 4)
            out.append(dataclasses.replace(event, **changes) if changes else event)
        return out

    def complete_final(self, pending: PendingFinal, final: Final) -> Final:
        """The Final that ``pending.compute()`` returned, with its speaker and latency stamped."""
        return self._stamp([dataclasses.replace(final, speaker=pending.speaker)])[0]

    def _arrival_of(self, seconds: float) -> float | None:
        sample = int(round(seconds * SAMPLE_RATE))
        i = bisect_left(self._arrivals, (sample, float("-inf")))
        if i < len(self._arrivals):
            return self._arrivals[i][1]
        return self._arrivals[-1][1] if self._arrivals else None

    def _last_arrival(self) -> float:
        return self._arrivals[-1][1] if self._arrivals else time.monotonic()

    @property
    def log_probs(self) -> np.ndarray:
        """All chunk log-probs so far, (T, V); needs ``new_stream(keep_log_probs=True)``."""
        if self._kept is None:
            raise RuntimeError("create the stream with new_stream(keep_log_probs=True)")
        if not self._kept:
            return np.zeros((0, len(self.pipeline.vocabulary.tokens)), dtype=np.float32)
        return np.concatenate(self._kept)

    def speaker_turns(self) -> list[tuple[float, float, str]]:
        """Diarization so far as (start, end, label) turns (empty without speaker tracking)."""
        return [] if self._speakers is None else self._speakers.turns()
