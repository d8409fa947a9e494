"""The ``wavlm-stream`` command line: transcribe a file, caption the microphone, serve.

Errors a user can cause (a missing file, a corrupt file, a missing checkpoint, no
microphone) print one ``error: ...`` line on stderr and exit with status 2, never a
traceback. With ``--json`` stdout carries one event per line and nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from decoders.events import ErrorEvent, Event, Final, Partial, SpeakerChange

EXIT_USAGE = 2


class UserError(Exception):
    """A problem with the user's input, reported as one line."""


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="checkpoint directory or hub id of a WavLM CTC model (default: the bundled model)")
    p.add_argument("--chunk-ms", type=float, default=640.0, help="audio made final per step (default 640)")
    p.add_argument("--left-ms", type=float, default=2000.0, help="left context per window (default 2000)")
    p.add_argument("--right-ms", type=float, default=320.0, help="lookahead per window (default 320)")
    p.add_argument("--mode", choices=("cached", "recompute"), default="cached",
                   help="reuse left-context keys/values (cached, default) or recompute each window")
    p.add_argument("--warmup-ms", type=float, default=1000.0,
                   help="group-norm models (the bundled one): audio the front end gathers its first normalisation "
                        "statistics from before the first window (default 1000; longer holds the first partial back "
                        "that long and brings the partials closer to offline, see README, Where the partials' drift "
                        "comes from)")
    p.add_argument("--speaker-model", default=None,
                   help="x-vector or frame-classification checkpoint for speaker tracking "
                        "(default: the CTC model's own speaker head, if it has one)")
    p.add_argument("--no-speakers", action="store_true", help="turn speaker tracking off")
    p.add_argument("--max-speakers", type=int, default=None, metavar="N",
                   help="cap on distinct speaker labels (default 8)")
    p.add_argument("--speaker-window", type=float, default=None, metavar="S",
                   help="seconds of audio per speaker embedding (default 1.28)")
    p.add_argument("--speaker-hop", type=float, default=None, metavar="S",
                   help="seconds between speaker embeddings (default 0.5; shorter reacts sooner)")
    p.add_argument("--speaker-peak-threshold", type=float, default=None, metavar="D",
                   help="cosine distance between neighbouring speaker embeddings that can be a change "
                        "(default 0.2, tuned for the bundled model; bench/speaker_eval.py --tune finds "
                        "one for other speaker models)")
    p.add_argument("--enrol", action="append", default=[], metavar="NAME=FILE",
                   help="label a known speaker's voice NAME instead of S1, S2, ...: FILE is a few seconds of that "
                        "speaker alone (repeatable; needs the bundled model's speaker head or an x-vector "
                        "--speaker-model)")
    p.add_argument("--no-change-detector", action="store_true",
                   help="find speaker changes from the embedding windows alone, not with the bundled model's "
                        "learned change detector (reacts about 0.7 s later; see README, Speakers)")
    p.add_argument("--hotword", action="append", default=[], metavar="WORD",
                   help="boost a word in the final beam search (repeatable)")
    p.add_argument("--kenlm", default=None, metavar="ARPA_OR_BIN",
                   help="KenLM language model for the final beam search (needs the kenlm extra); "
                        "python -m train.lm builds one for the bundled model")
    p.add_argument("--lm-weight", type=float, default=0.5,
                   help="weight of the --kenlm model in the beam search (pyctcdecode's alpha, default 0.5)")
    p.add_argument("--word-bonus", type=float, default=1.0,
                   help="score bonus per word with --kenlm (pyctcdecode's beta, default 1.0)")
    p.add_argument("--no-beam", action="store_true", help="finalise segments greedily, without beam search")
    p.add_argument("--no-final-pass", action="store_true",
                   help="decode finals from the streamed log-probs instead of running the model again over each "
                        "finished segment (faster; finals then drift from offline as partials do)")
    p.add_argument("--int8", action="store_true",
                   help="int8 dynamic quantization of the Linear layers (faster on CPU, slightly less accurate)")
    p.add_argument("--bf16", action="store_true",
                   help="the transformer in bfloat16 (faster on CPUs with AVX512-BF16 or AMX, slightly less accurate)")
    p.add_argument("--no-packed-weights", action="store_true",
                   help="keep one copy of the Linear weights: no second copy in oneDNN's layout (the stream's "
                        "products run 1.15-1.35x faster on it, for 20 MB with the bundled model, 340 MB at base size)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("wavlm-stream")
    except PackageNotFoundError:            # run from a checkout that was never installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wavlm-stream",
                                     description="Streaming WavLM: live captions and speaker changes.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("transcribe", help="stream an audio file through the engine and show captions")
    t.add_argument("file", help="audio file (WAV, FLAC, OGG, ...; any rate, mono or multi-channel), or - for "
                                "audio with a header piped into standard input (arecord -t wav, ffmpeg -f wav -)")
    _add_model_arguments(t)
    t.add_argument("--json", action="store_true", help="print events as JSON lines and nothing else on stdout")
    t.add_argument("--realtime", action="store_true", help="pace the file at 1x, as if live")
    t.add_argument("--rttm", default=None, metavar="FILE", help="write the speaker turns as RTTM")
    t.add_argument("--subtitles", default=None, metavar="FILE.srt|FILE.vtt",
                   help="also write the finals as subtitles (SubRip or WebVTT, by the name's suffix)")

    m = sub.add_parser("mic", help="live captions from the microphone (Ctrl-C to stop)")
    _add_model_arguments(m)
    m.add_argument("--device", default=None, help="input device index or name (see --list-devices)")
    m.add_argument("--list-devices", action="store_true", help="list input devices and exit")
    m.add_argument("--json", action="store_true", help="print events as JSON lines")
    m.add_argument("--subtitles", default=None, metavar="FILE.srt|FILE.vtt",
                   help="when stopped (Ctrl-C), write what was heard as subtitles (SubRip or WebVTT)")

    s = sub.add_parser("serve", help="websocket server with the browser demo")
    from stream.server import add_serve_arguments
    add_serve_arguments(s)
    return parser


def load_pipeline(args):
    """Build the pipeline from the shared model arguments, turning load errors into UserError."""
    import torch

    from decoders.beam import LanguageModelError, check_language_model_file
    from stream.pipeline import Pipeline, StreamConfig

    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.int8 and args.bf16:
        raise UserError("--int8 and --bf16 are two ways to speed up the same layers: choose one")
    tracker = speaker_tracker_config(args)
    stream_options = dict(chunk_ms=args.chunk_ms, left_ms=args.left_ms, right_ms=args.right_ms, mode=args.mode,
                          group_norm_warmup_ms=args.warmup_ms)
    if not args.warmup_ms >= 0:
        raise UserError(f"--warmup-ms must be >= 0, got {args.warmup_ms:g}")
    try:
        StreamConfig(**stream_options)
    except ValueError as exc:
        raise UserError(f"window options (--chunk-ms, --left-ms, --right-ms): {exc}") from None
    if args.kenlm:
        try:
            check_language_model_file(args.kenlm)
        except (FileNotFoundError, ImportError, LanguageModelError) as exc:
            raise UserError(f"--kenlm: {exc}") from None
    enrolments = parse_enrolments(args.enrol, args.no_speakers)
    try:
        pipeline = Pipeline.from_pretrained(
            args.model, speaker_model=args.speaker_model, speakers=not args.no_speakers,
            speaker_tracker_config=tracker,
            **stream_options,
            beam=not args.no_beam, hotwords=tuple(args.hotword), kenlm_path=args.kenlm, int8=args.int8, bf16=args.bf16,
            packed_weights=not args.no_packed_weights,
            lm_weight=args.lm_weight, word_bonus=args.word_bonus, final_pass=not args.no_final_pass)
    except LanguageModelError as exc:
        raise UserError(f"--kenlm: {exc}") from None
    except (FileNotFoundError, ValueError, KeyError, OSError, ImportError, RuntimeError) as exc:
        raise UserError(f"cannot load the model: {exc}") from None
    enrol_speakers(pipeline, enrolments)
    return pipeline


def parse_enrolments(values: list[str], no_speakers: bool) -> list[tuple[str, str]]:
    """``--enrol NAME=FILE`` values -> [(name, path)], checked before the model loads: the form,
    the name, no name twice, and that each file is audio that can be read."""
    from decoders.clustering import check_speaker_name
    from stream.sources import SourceError, read_file_info

    if values and no_speakers:
        raise UserError("--enrol labels the voices speaker tracking finds, and --no-speakers turns it off")
    enrolments = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--enrol takes NAME=FILE (e.g. --enrol alice=alice.wav), got {value!r}")
        try:
            check_speaker_name(name)
            read_file_info(path)
        except (ValueError, SourceError) as exc:
            raise UserError(f"--enrol {value}: {exc}") from None
        if name in (n for n, _ in enrolments):
            raise UserError(f"--enrol: {name!r} is given twice")
        enrolments.append((name, path))
    return enrolments


def enrol_speakers(pipeline, enrolments: list[tuple[str, str]]) -> None:
    """Teach the pipeline each enrolled voice (``Pipeline.enrol``), naming the option that fails."""
    import soundfile as sf

    for name, path in enrolments:
        try:
            audio, rate = sf.read(path, dtype="float32", always_2d=True)
            pipeline.enrol(name, audio, rate)
        except Exception as exc:  # soundfile's errors, ValueError / AudioFormatError from enrol
            raise UserError(f"--enrol {name}={path}: {exc}") from None


def speaker_tracker_config(args):
    """The speaker tracker's settings with the command line's overrides (None: all defaults)."""
    import dataclasses

    from decoders.speaker import SpeakerTrackerConfig

    overrides = {field: value for field, value in (("max_speakers", args.max_speakers),
                                                   ("window_s", args.speaker_window),
                                                   ("hop_s", args.speaker_hop),
                                                   ("peak_threshold", args.speaker_peak_threshold),
                                                   ("change_detector", False if args.no_change_detector else None))
                 if value is not None}
    if not overrides:
        return None
    try:
        return dataclasses.replace(SpeakerTrackerConfig(), **overrides)
    except ValueError as exc:
        raise UserError(f"speaker tracking options: {exc}") from None


class CaptionPrinter:
    """Terminal captions: the partial line is rewritten in place, finals are printed.

    On a terminal, partials show on one line that each update overwrites; when stdout is
    not a terminal only finals and speaker changes are printed, one per line.
    """

    def __init__(self, out=None, json_lines: bool = False, keep_finals: bool = False):
        self.out = sys.stdout if out is None else out
        self.keep_finals = keep_finals
        self.finals: list[Final] = []      # with keep_finals: every final shown, for --subtitles
        self.json_lines = json_lines
        self.live = not json_lines and self.out.isatty()
        self.last_speaker = None
        self._last_change_time: float | None = None
        self._partial_shown = False

    def show(self, event: Event) -> None:
        if self.keep_finals and isinstance(event, Final):
            self.finals.append(event)
        if self.json_lines:
            print(event.to_json(), file=self.out, flush=True)
        elif isinstance(event, Partial):
            if self.live:
                self.out.write(f"\r\033[K\033[2m{_clock(event.start)} {event.text}\033[0m")
                self.out.flush()
                self._partial_shown = True
        elif isinstance(event, Final):
            self._clear_partial()
            if not event.text:
                return
            if event.speaker is not None and event.speaker != self.last_speaker:
                if self.last_speaker is not None:
                    print(file=self.out)
                self.last_speaker = event.speaker
            who = f" {event.speaker}" if event.speaker else ""
            print(f"[{_clock(event.start)}{who}] {event.text}", file=self.out, flush=True)
        elif isinstance(event, SpeakerChange):
            self._clear_partial()
            # The same time again restates the label of that change (the tracker's first guess was wrong).
            note = " (label corrected)" if event.time == self._last_change_time else ""
            self._last_change_time = event.time
            print(f"-- speaker {event.from_speaker or '-'} -> {event.to_speaker} at {_clock(event.time)}{note}",
                  file=self.out, flush=True)
        elif isinstance(event, ErrorEvent):
            self._clear_partial()
            print(f"error: {event.message}", file=sys.stderr, flush=True)

    def _clear_partial(self) -> None:
        if self._partial_shown:
            self.out.write("\r\033[K")
            self._partial_shown = False


def _clock(seconds: float) -> str:
    minutes, secs = divmod(max(0.0, seconds), 60)
    return f"{int(minutes):02d}:{secs:05.2f}"


async def _run_source(stream, source, printer: CaptionPrinter) -> None:
    from stream.sources import stream_events

    try:
        async for event in stream_events(stream, source):
            printer.show(event)
    except asyncio.CancelledError:
        # Ctrl-C on a live source: still print the finals of what was heard.
        for event in stream.finish():
            printer.show(event)
        raise
    finally:
        printer._clear_partial()


def check_output_path(option: str, path: str | None) -> None:
    """An output file's folder must exist: said before the model loads, not after the whole run."""
    if path is not None and not Path(path).absolute().parent.is_dir():
        raise UserError(f"{option} {path}: no such folder {Path(path).absolute().parent}")


def check_subtitles_path(path: str | None) -> None:
    """--subtitles: a name ending in .srt or .vtt in a folder that exists, checked before the model loads."""
    from decoders.subtitles import subtitle_format

    if path is not None:
        try:
            subtitle_format(path)
        except ValueError as exc:
            raise UserError(f"--subtitles: {exc}") from None
    check_output_path("--subtitles", path)


def write_subtitles_of(printer: CaptionPrinter, path: str | None) -> None:
    from decoders.subtitles import write_subtitles

    if path is None:
        return
    try:
        write_subtitles(path, printer.finals)
    except OSError as exc:
        raise UserError(f"cannot write the subtitle file {path}: {exc.strerror or exc}") from None


def write_rttm_of(stream, pipeline, path: str | None, file_id: str) -> None:
    from decoders.turns import write_rttm

    if path is None:
        return
    turns = stream.speaker_turns()
    if not turns and pipeline.speaker_source_factory is None:
        print("warning: no speaker tracking (the model has no speaker head; use --speaker-model); "
              "the RTTM file is empty", file=sys.stderr)
    try:
        with open(path, "w") as fp:
            write_rttm(turns, file_id, fp)
    except OSError as exc:
        raise UserError(f"cannot write the RTTM file {path}: {exc.strerror or exc}") from None


def run_keeping_what_was_heard(stream, source, printer: CaptionPrinter, name: str) -> tuple[UserError | None, bool]:
    """Run a source through a stream; a source that fails part-way (a damaged file, a lost
    device) or Ctrl-C ends the run without raising, so the caller still writes its output files
    from what was transcribed. Returns (the error to report after that or None, interrupted)."""
    from stream.audio import AudioFormatError
    from stream.sources import SourceError

    try:
        asyncio.run(_run_source(stream, source, printer))
    except SourceError as exc:
        return UserError(str(exc)), False
    except AudioFormatError as exc:
        return UserError(f"{name}: {exc}"), False
    except KeyboardInterrupt:
        return None, True
    return None, False


def cmd_transcribe(args) -> int:
    from stream.sources import SourceError, file_source, read_file_info, require_piped_stdin, stdin_source

    from_stdin = args.file == "-"
    try:
        # Fail fast, before loading the model.
        require_piped_stdin() if from_stdin else read_file_info(args.file)
    except SourceError as exc:
        raise UserError(str(exc)) from None
    check_subtitles_path(args.subtitles)
    check_output_path("--rttm", args.rttm)
    pipeline = load_pipeline(args)
    printer = CaptionPrinter(json_lines=args.json, keep_finals=args.subtitles is not None)
    stream = pipeline.new_stream()
    source = (stdin_source(realtime=args.realtime) if from_stdin
              else file_source(args.file, realtime=args.realtime))
    failure, interrupted = run_keeping_what_was_heard(stream, source, printer,
                                                      "standard input" if from_stdin else args.file)
    write_subtitles_of(printer, args.subtitles)
    write_rttm_of(stream, pipeline, args.rttm, "stdin" if from_stdin else Path(args.file).stem)
    if failure is not None:
        raise failure
    return 130 if interrupted else 0        # 130: a live pipe stopped with Ctrl-C


def cmd_mic(args) -> int:
    from stream.sources import SourceError, input_device_info, list_input_devices, microphone_source

    try:
        if args.list_devices:
            print("\n".join(list_input_devices()) or "no input devices")
            return 0
        device = int(args.device) if args.device is not None and args.device.isdigit() else args.device
        check_subtitles_path(args.subtitles)
        input_device_info(device)           # fail fast, before loading the model
        pipeline = load_pipeline(args)
    except SourceError as exc:
        raise UserError(str(exc)) from None
    printer = CaptionPrinter(json_lines=args.json, keep_finals=args.subtitles is not None)
    failure, _ = run_keeping_what_was_heard(pipeline.new_stream(), microphone_source(device), printer, "microphone")
    write_subtitles_of(printer, args.subtitles)
    if failure is not None:
        raise failure
    return 0                                # Ctrl-C is how mic ends


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "transcribe":
            return cmd_transcribe(args)
        if args.command == "mic":
            return cmd_mic(args)
        from stream.server import run_serve
        return run_serve(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # stdout's reader went away (``... --json | head``): what it read stays valid; stop quietly.
        # Point stdout at devnull so the interpreter's final flush does not raise again.
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    # Through the importable module, not this __main__ copy: other modules raise stream.cli.UserError,
    # which __main__.main would not catch (python -m stream.cli).
    from stream.cli import main as module_main
    sys.exit(module_main())
