"""Known voices (``--enrol``): does an enrolled speaker get their name, on real recorded voices?

Meetings are assembled as ``bench/speaker_eval.py --real-wide`` assembles them, from
ktuberling-data's recorded words (one volunteer per language, wideband microphone recordings),
except that each voice's recordings are split first: the first ``--enrol-seconds`` of them
(in a seeded random order, joined with short pauses) are that voice's enrolment, and only the
others are spoken in the meetings. Each meeting then goes through the streaming engine three
times:

* nobody enrolled (labels S1, S2, ...);
* the meeting's cast enrolled (everyone present is known);
* every voice of the set enrolled (the cast among others who are not in the meeting).

Printed per system: DER with the usual best one-to-one mapping of labels, DER "by name" (a
hypothesis label counts as right only where it is the reference speaker's own name; the
anonymous labels S1, S2, ... never are), and the share of scored speech labelled with a name.

Usage: python bench/enrolment.py [--meetings 16] [--seconds 90] [--enrol-seconds 8]
       [--model DIR] [--speaker-model DIR]   (needs apt-get install ktuberling-data)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from decoders.speaker import SpeakerTrackerConfig  # noqa: E402
from speaker_eval import KTUBERLING, SR, assemble_meetings, wide_voices  # noqa: E402
from speaker_metrics import DERCounts, diarization_error  # noqa: E402

COLLAR = 0.25


def split_voices(enrol_seconds: float, seed: int) -> tuple[dict[str, np.ndarray], dict[str, list[np.ndarray]]]:
    """Each ktuberling voice with enough speech -> (its enrolment audio, its other clips for meetings)."""
    rng = np.random.default_rng(seed)
    pause = np.zeros(int(0.3 * SR), dtype=np.float32)
    enrolment, rest = {}, {}
    for name, clips in wide_voices("bench/enrolment.py").items():
        clips = [clips[k] for k in rng.permutation(len(clips))]
        taken, seconds = [], 0.0
        while seconds < enrol_seconds:
            clip = clips.pop()
            taken += [clip, pause]
            seconds += len(clip) / SR
        enrolment[name], rest[name] = np.concatenate(taken), clips
    return enrolment, rest


def named_share(ref, hyp, names: set[str], step: float = 0.01) -> float:
    """Share of the reference's speech time (frame centres every `step`) labelled with one of `names`."""
    end = max(t.end for t in ref)
    frames = np.arange(0.0, end, step) + step / 2
    speech = np.zeros(len(frames), dtype=bool)
    named = np.zeros(len(frames), dtype=bool)
    for t in ref:
        speech |= (frames >= t.start) & (frames < t.end)
    for t in hyp:
        if t.label in names:
            named |= (frames >= t.start) & (frames < t.end)
    return float((speech & named).sum() / max(speech.sum(), 1))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--meetings", type=int, default=16)
    p.add_argument("--seconds", type=float, default=90.0, help="length of each assembled meeting")
    p.add_argument("--enrol-seconds", type=float, default=8.0, help="speech per voice held out for its enrolment")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="CTC checkpoint (default: the bundled model)")
    p.add_argument("--speaker-model", default=None, help="x-vector checkpoint (default: the model's speaker head)")
    args = p.parse_args(argv)

    import torch

    from stream import Pipeline

    torch.set_num_threads(2)
    enrolment, rest = split_voices(args.enrol_seconds, args.seed)
    meetings = assemble_meetings(rest, args.meetings, args.seconds, args.seed, "enrol")
    config = SpeakerTrackerConfig(max_speakers=max(8, len(enrolment)))
    pipe = Pipeline.from_pretrained(args.model, speaker_model=args.speaker_model, beam=False, final_pass=False,
                                    speaker_tracker_config=config)
    everyone = {}
    for name, audio in enrolment.items():
        pipe.enrol(name, audio, SR)
        everyone[name] = pipe.enrolled[name]
    print(f"{len(enrolment)} voices of {KTUBERLING}, enrolment {args.enrol_seconds:g} s of each "
          f"(mean cosine similarity between two voices' enrolments "
          f"{np.mean([a @ b for i, a in enumerate(everyone.values()) for j, b in enumerate(everyone.values()) if i < j]):.2f}); "
          f"{len(meetings)} meetings of {args.seconds:g} s, 3-4 voices each")

    systems = {"nobody enrolled": lambda cast: {}, "the cast enrolled": lambda cast: {n: everyone[n] for n in cast},
               "every voice enrolled": lambda cast: everyone}
    print("| system | DER (best mapping) | DER by name | speech labelled with a name |")
    print("|---|---|---|---|")
    t0 = time.perf_counter()
    for system, known in systems.items():
        mapped, by_name, shares = DERCounts(), DERCounts(), []
        for m in meetings:
            cast = sorted({t.label for t in m.ref})
            pipe.enrolled = dict(known(cast))
            stream = pipe.new_stream()
            stream.feed(m.audio, SR)
            stream.finish()
            hyp = stream.speaker_turns()
            mapped.add(diarization_error(m.ref, hyp, COLLAR))
            by_name.add(diarization_error(m.ref, hyp, COLLAR, by_name=True))
            shares.append(named_share(m.ref, hyp, set(pipe.enrolled)))
        print(f"| {system} | {100 * mapped.der:.1f} % | {100 * by_name.der:.1f} % | {100 * np.mean(shares):.0f} % |")
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
