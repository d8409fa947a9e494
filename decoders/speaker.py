"""Speaker tracking for a stream: change detection with hysteresis + online clustering.

The tracker sees one speaker embedding per rolling window (e.g. 1.28 s every 0.5 s,
from any `stream.speakers.EmbeddingSource`) together with the fraction of the
window that is speech, and turns them into

- `SpeakerChange` events, each carrying the estimated time the new speaker started
  (not the time the change was detected) and a score;
- stable labels S1, S2, ... (`label_for` an interval, for finals), or the names of
  enrolled speakers (`enrolled`: a name and an embedding of a recording of their voice);
- the diarization as speaker turns (`turns`; decoders.turns cuts them and writes RTTM).

How it decides
--------------
Each speech window is compared with the speech window before it (cosine distance, the
"jump"). A change is considered where the jump peaks above `peak_threshold`: a window
whose jump is at least its predecessor's and greater than its successor's, and more than
`peak_ratio` times the median jump of the stream's last `peak_history` speech windows (real
recordings vary more from window to window than synthetic speech; bench/speaker_eval.py
--real 4 with and without it: real-voice meetings change F1 0.37 -> 0.41, DER 49 -> 38 %;
the 40 synthetic ones F1 0.826 -> 0.836, DER 22.9 -> 21.1 %).
Comparing neighbours rather than one window with a speaker's centroid is what finds the changes:
the embedding of a short window varies with what is said, and that variation is as large
as the distance between voices, but it changes slowly from one window to the next, while
a new voice makes one sharp step (measured on held-out meetings with bench/speaker_eval.py,
same embeddings and windows: change F1 0.87 on the test meetings against 0.65 when windows
voted against the current speaker's centroid).

Who speaks after a peak is decided by the `hysteresis` windows that follow it. They must
agree with each other (within `change_threshold` of their mean), and their mean must be
further than `change_threshold` from the current speaker's recent voice (the mean of
the windows before the peak since that speaker's turn began; a centroid gathered over a
whole meeting is too blurred to tell): otherwise it is the same voice on both sides, as
when one noisy window (a cough, a laugh, a door) makes a jump into it and one out of it,
and nothing happens. The new voice then goes to the closest other known speaker within
`new_speaker_threshold` (a returning speaker keeps the label) or, when none is that
close, to a new label (at `max_speakers`, to the closest other known one).

A returning speaker is recognised sooner: a rising jump above `peak_threshold` into a
window that is already within `return_threshold` of another known speaker's centroid is
decided by that window alone, one hop before the window after the peak would be. A
noise or a laugh is not close to anyone's voice, so it still waits for the windows after
it (40 held-out meetings, bench/speaker_eval.py, other settings equal: median change
latency 2.16 -> 2.03 s at the same change F1). With
hysteresis 0 the window at a jump above the threshold decides alone, as soon as it
arrives (and flaps). Silent windows (no embedding, or speech fraction below
`min_speech_fraction`) are skipped: a pause is never a change, and "A, pause, B" is a
change at B's onset (B's first window jumps from A's last).

Change point: the step from the window before the peak to the peak window lies between
their middles; a parabola through the three jumps around the peak moves it by up to half
a hop (a noisy jump can make the neighbouring window the peak). After a pause the change
time is the new speaker's speech onset. With frame-level speech (`push_speech`) the
estimate then moves to the speech onset after the longest pause within `snap_s`, since
turns mostly change at pauses. (Projecting the straddling windows on the line between
the two voices, as a linear mixture would allow, placed real changes worse: the speaker
head's embeddings of a mixed window are not a linear mix.)

With a learned change detector (the bundled model's, see stream.speakers.BundledSpeakerHead)
the tracker also gets change candidates (`push_candidate`): a time where the detector's
probability peaks, with embeddings of the speech just before and just after it. A candidate
is a change when those two are further apart than `detector_verify`; who speaks after it is
decided from the "after" embedding as for a window peak. The detector hears a change within
its 0.4 s look-ahead plus `detector_after_s` (median change latency 1.24 s on the held-out
meetings against 1.92 s for the windows alone), but half a second of speech labels a voice
less reliably than a window (on the same meetings, changes matched to the same reference
speaker got the same label 73 % of the times against 85 %). So that label is provisional:
the first `hysteresis` windows entirely after the change decide who speaks as after a
window peak, and when that is someone else the change is restated (a second event at the
same time with the new label; with the previous speaker's label when the windows are within
`detector_retract` of it: the change is retracted). Turns, finals' labels and RTTM follow the
restated label. The windows keep the centroids, and a window peak is still a change when it
comes `detector_window_gap_s` or more after the last change (those the detector missed) and
the detector's probability peaked above `detector_support` near it, or, heard by the detector
or not, when the voices after and before it are `detector_support_waived` or more apart (two
clearly different voices: the detector of a model misses some changes between voices it never
heard; 40 held-out meetings F1 0.898 -> 0.910, DER 18.6 -> 17.4 %; a window peak the detector
did not hear with closer voices is mostly a change of what is said, not of who says it);
closer than the gap, it is the detector's change seen again. A weaker candidate (probability between
`detector_weak_threshold` and `detector_threshold`) waits for the windows after it, as a
window peak does, and is a change at its own time if they agree on another voice: these
are often the onsets of a voice that starts while the other is still speaking, which the
window peaks rarely find (40 meetings: F1 0.882 -> 0.891, DER 25.2 -> 24.1 %). Half a
second after a candidate is not always enough to tell: one whose two embeddings are closer
than `detector_sure` is decided on its second look, the same comparison with
`detector_second_look_s` of speech after it (most of the detector's false changes were
between two utterances of one voice, 0.4-0.6 apart at half a second; 40 meetings: F1 0.891
-> 0.897, DER 24.1 -> 22.5 %, median latency 1.25 -> 1.29 s).

Speech vs silence for the turns comes from per-frame speech activity when the caller
gives it (`push_speech`, e.g. an energy VAD at 20 ms); pauses shorter than
`min_pause_s` stay inside a turn. Without it, speech is recovered from the windows'
speech fractions at the resolution of the window boundaries (one hop): an interval is
speech only if every window covering it has enough speech to fill it.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from decoders.clustering import OnlineClusters, unit
from decoders.events import SpeakerChange
from decoders.turns import SpeechActivity, Turn


@dataclass(frozen=True)
class SpeakerTrackerConfig:
    """Options of `SpeakerTracker`; the window geometry is also read by the embedding sources."""

    # `bench/speaker_eval.py --real 4 --tune`'s choice for the bundled model (step 29,937 with its change
    # detector), tuned on the first 20 of the 40 held-out meetings of `python -m train.meetings`, except
    # detector_support 0.05 (the tune's choice was 0): it keeps window peaks that the detector did not hear
    # at all from becoming changes, which real recordings need (4 meetings of real voices: change F1 0.51 ->
    # 0.67) at a cost on the synthetic ones (first 20: F1 0.905 -> 0.898). The second look (detector_sure,
    # detector_second_look_s) and detector_verify 0.4 were chosen on the same 20 from a grid (second look
    # 0.8-1.2 s, sure 0.5-0.7, verify 0.35-0.45, all within 0.01 of each other in F1), detector_weak_threshold
    # 0.6 among 0.5-0.8 (equal F1 on the 20; 0.5-0.6 the lowest real-voice DER). On all 40: change F1 0.904
    # (P 0.957, R 0.856), DER 21.8 %, median change latency 1.29 s; the 20 not tuned on: F1 0.910, DER
    # 23.6 %, 1.30 s; 40 fresh meetings never used to choose anything (`train.meetings --seed 7`): F1 0.902,
    # DER 23.7 %, 1.31 s. Without the detector (change_detector False) these settings give F1 0.830, DER
    # 26.1 %, 2.54 s; the windows' own best (1.5 s windows, peak 0.2, hysteresis 1, change 0.5, new speaker
    # 0.8, return 0.5) gave F1 0.836, DER 21.1 %, 1.92 s. The export bundled since 2026-11-27 (run 11 of
    # train/README.md) kept these settings: all 40 F1 0.902 (P 0.979, R 0.836), DER 19.4 %, 1.31 s; seed 7
    # F1 0.898, DER 18.9 %, 1.30 s; and so do run 18: F1 0.900 (P 0.974, R 0.836), DER 18.4 %, 1.31 s;
    # seed 7 0.896, 18.6 %; and run 19: F1 0.899 (P 0.974, R 0.834), DER 18.6 %, 1.30 s; seed 7 0.897,
    # 18.6 %; and run 20: F1 0.899, DER 18.6 %, 1.31 s; seed 7 0.896, 18.8 %; and run 22 (bundled from
    # 2026-11-29; runs 19, 20, 22 and 24 carry run 18's detector): F1 0.898 (P 0.972, R 0.834), DER 18.6 %,
    # 1.31 s; seed 7 0.896, 18.8 %; and run 24 (bundled since later that day, the same detector): F1 0.898
    # (P 0.972, R 0.834), DER 18.6 %, 1.30 s; seed 7 0.893, 19.2 %. detector_support_waived 0.7 came later
    # (2026-12-07, run 24, `bench/speaker_eval.py --real 4 --also detector_support_waived=X`, chosen on the 40
    # held-out meetings among 2.0 (off) / 1.1 / 1.0 / 0.9 / 0.8 / 0.7 / 0.6: F1 0.898 / 0.898 / 0.900 / 0.904 /
    # 0.907 / 0.910 / 0.909): all 40 F1 0.910 (P 0.971, R 0.856), DER 17.4 %, 1.31 s; seed 7 F1 0.904, DER
    # 16.0 % (off: 0.893, 19.2 %); real voices F1 0.717, DER 24.0 % (off: 0.706, 23.8 %). peak_threshold 0.2
    # (0.35 before) came with run 26 (bundled since 2026-12-07, its own detector): `--tune` chose it on the first
    # 20 held-out meetings, and `bench/speaker_eval.py --real 24 --also peak_threshold=0.2` (and `--real-wide 16`,
    # `--meetings .../meetings_seed7`) confirmed it: all 40 F1 0.900 -> 0.903, DER 14.5 -> 12.9 %; seed 7 0.903 ->
    # 0.909, 14.2 -> 11.9 %; 24 real telephone-voice meetings 0.660 -> 0.665, 37.0 -> 35.7 %; 16 real wideband
    # ones 0.579 -> 0.575, 37.1 -> 37.3 %; median latency 1.31-1.40 s unchanged. (0.25 gave the same on the
    # real sets and less on the synthetic; the tune's return_threshold 0.4 and peak_ratio 0 gave nothing on
    # top.) Other speaker models want their own settings (retune with the bench).
    window_s: float = 1.28              # length of each embedding window (s)
    hop_s: float = 0.5                  # a new window every hop (s)
    peak_threshold: float = 0.2         # cosine distance between neighbouring speech windows above which a
                                        # peak of it is a candidate change
    peak_ratio: float = 2.0             # ... and above this multiple of the median jump of the last `peak_history`
                                        # speech windows (0 = off): adapts to audio whose windows vary more
    peak_history: int = 60              # speech windows whose median jump peak_ratio scales
    hysteresis: int = 2                 # windows after a peak that decide who speaks (0: the peak window alone)
    change_threshold: float = 0.6       # those windows must be within this cosine distance of their mean, and
                                        # further from the current speaker's recent voice; windows this close to
                                        # the current speaker refine its centroid
    new_speaker_threshold: float = 0.6  # cosine distance to every known centroid above which a new label is opened
    return_threshold: float = 0.0       # a jump into a window this close to another known speaker's centroid is
                                        # decided at once (no wait for the window after it); 0 = never
    max_speakers: int = 8               # cap on distinct labels
    min_speech_fraction: float = 0.5    # windows with less speech than this are silence
    centroid_max_count: int = 50        # centroids are running means with weight >= 1/centroid_max_count
    min_pause_s: float = 0.3            # turns: pauses shorter than this (in push_speech frames) stay inside a turn
    snap_s: float = 0.75                # move a change to the speech onset after the longest pause within this
                                        # distance (>= 0.1 s pause; needs push_speech); 0 = never
    # The bundled model's learned change detector (stream.speakers.BundledSpeakerHead, when the model has one):
    change_detector: bool = True        # use it (False: window peaks alone)
    detector_threshold: float = 0.95    # change probability above which a verified candidate is a change at once
    detector_weak_threshold: float = 0.6  # candidates above this (and below the above) are changes only once the
                                        # `hysteresis` windows after them confirm it (later, but these are often
                                        # onsets under overlapping speech); >= detector_threshold: none
    detector_min_gap_s: float = 0.5     # candidates at least this far apart
    detector_before_s: float = 2.0      # a candidate compares the speech up to this long before it ...
    detector_after_s: float = 0.5       # ... with the speech this long after it (it waits for that)
    detector_verify: float = 0.4        # cosine distance between the two above which the voice changed
    detector_sure: float = 0.6          # a candidate whose two are at least this far apart is decided at once;
                                        # a closer one waits for its second look (0: every one at once) ...
    detector_second_look_s: float = 1.0  # ... which compares the speech before it with this long after it
    detector_window_gap_s: float = 1.5  # with the detector, a window peak is a change only this long after the
                                        # last change (inf: the detector's candidates alone)
    detector_support: float = 0.05      # ... and only where the detector's probability peaked above this
    detector_support_s: float = 0.5     # within this distance of the window peak's change time (0: no such test)
    detector_support_waived: float = 0.7  # ... unless the voices before and after it are at least this far apart
                                        # (cosine distance; 2.0: never waived)
    detector_retract: float = 0.45      # a candidate's change whose following windows are this close to the
                                        # previous speaker is retracted (restated with the previous label); 0: never

    def is_speech(self, embedding, speech_fraction: float) -> bool:
        """Does a window take part as speech (an embedding, and at least min_speech_fraction of speech)?"""
        return embedding is not None and speech_fraction >= self.min_speech_fraction

    def __post_init__(self):
        if not (self.window_s > 0 and self.hop_s > 0):
            raise ValueError(f"window_s and hop_s must be > 0, got {self.window_s}, {self.hop_s}")
        if self.hop_s > self.window_s:
            raise ValueError(f"hop_s ({self.hop_s}) must not exceed window_s ({self.window_s})")
        if not 0.0 < self.peak_threshold < 2.0:
            raise ValueError(f"peak_threshold is a cosine distance in (0, 2), got {self.peak_threshold}")
        if not 0.0 < self.change_threshold < 2.0:
            raise ValueError(f"change_threshold is a cosine distance in (0, 2), got {self.change_threshold}")
        if not 0.0 < self.new_speaker_threshold < 2.0:
            raise ValueError(f"new_speaker_threshold is a cosine distance in (0, 2), got {self.new_speaker_threshold}")
        if not 0.0 <= self.return_threshold <= self.new_speaker_threshold:
            raise ValueError(f"return_threshold must be in [0, new_speaker_threshold = {self.new_speaker_threshold}], "
                             f"got {self.return_threshold}")
        if self.peak_ratio < 0 or self.peak_history < 1:
            raise ValueError(f"peak_ratio must be >= 0 and peak_history >= 1, got {self.peak_ratio}, "
                             f"{self.peak_history}")
        if self.hysteresis < 0:
            raise ValueError(f"hysteresis must be >= 0, got {self.hysteresis}")
        if self.max_speakers < 1:
            raise ValueError(f"max_speakers must be >= 1, got {self.max_speakers}")
        if not 0.0 < self.detector_threshold < 1.0 or not 0.0 < self.detector_weak_threshold < 1.0:
            raise ValueError(f"detector_threshold and detector_weak_threshold are probabilities in (0, 1), got "
                             f"{self.detector_threshold}, {self.detector_weak_threshold}")
        if min(self.detector_min_gap_s, self.detector_before_s, self.detector_after_s) <= 0:
            raise ValueError("detector_min_gap_s, detector_before_s and detector_after_s must be > 0")
        if not 0.0 <= self.detector_support < 1.0 or self.detector_support_s < 0:
            raise ValueError(f"detector_support must be in [0, 1) and detector_support_s >= 0, got "
                             f"{self.detector_support}, {self.detector_support_s}")
        if not 0.0 <= self.detector_retract < 2.0:
            raise ValueError(f"detector_retract is a cosine distance in [0, 2), got {self.detector_retract}")
        if not 0.0 < self.detector_support_waived <= 2.0:
            raise ValueError(f"detector_support_waived is a cosine distance in (0, 2], got {self.detector_support_waived}")
        if not self.detector_window_gap_s >= 0:
            raise ValueError(f"detector_window_gap_s must be >= 0, got {self.detector_window_gap_s}")
        if not 0.0 <= self.detector_verify < 2.0:
            raise ValueError(f"detector_verify is a cosine distance in [0, 2), got {self.detector_verify}")
        if not 0.0 <= self.detector_sure < 2.0:
            raise ValueError(f"detector_sure is a cosine distance in [0, 2), got {self.detector_sure}")
        if self.detector_sure > 0 and not self.detector_second_look_s > self.detector_after_s:
            raise ValueError(f"detector_second_look_s ({self.detector_second_look_s}) must exceed detector_after_s "
                             f"({self.detector_after_s})")
        if not 0.0 <= self.min_speech_fraction <= 1.0:
            raise ValueError(f"min_speech_fraction must be in [0, 1], got {self.min_speech_fraction}")

    @property
    def windows_per_span(self) -> int:
        """How many consecutive windows overlap any one instant."""
        return math.ceil(self.window_s / self.hop_s - 1e-9)


@dataclass
class _Provisional:
    """The label of the last change, when it came from a change candidate: from half a second of
    speech, to be confirmed by the first windows after the change."""

    time: float             # the change time
    label: int              # the cluster given
    created: bool           # the cluster was opened for this change
    previous: int           # the speaker before the change
    windows: list           # unit embeddings (E,) of the speech windows since, up to `hysteresis`


@dataclass(frozen=True)
class _SpeechWindow:
    index: int          # position among all pushed windows
    start: float
    end: float
    fraction: float
    e: np.ndarray       # unit embedding (E,)
    onset: float        # estimated start of the stretch of speech this window belongs to
    after_silence: bool # the window pushed just before it was silence (or there was none)
    jump: float         # cosine distance to the previous speech window (0 for the first)


def _mean_direction(embeddings: list[np.ndarray]) -> np.ndarray:
    """Unit mean of unit embeddings, each (E,) -> (E,)."""
    return unit(np.mean(np.stack(embeddings), axis=0))


class SpeakerTracker:
    """Per-stream speaker tracker. Cheap to create; holds no model.

    push(start_s, end_s, embedding (E,) | None, speech_fraction) -> list[SpeakerChange]
    push_speech(first_frame, frame_s, speech (n,))   optional frame-level speech for the turns
    label_for(start_s, end_s) -> str | None
    turns() -> list[Turn]
    finish() -> list[SpeakerChange]
    """

    def __init__(self, config: SpeakerTrackerConfig | None = None, candidates: bool = False,
                 enrolled: dict[str, np.ndarray] | None = None):
        """enrolled: name -> embedding (E,) of a recording of that speaker (see `OnlineClusters`):
        their voices get their names as labels; voices nobody enrolled are S1, S2, ..."""
        self.config = config or SpeakerTrackerConfig()
        # True when a change detector feeds push_candidate: a window peak is then a change only
        # detector_window_gap_s after the last change (see the module docstring).
        self.candidates = candidates
        self._provisional: _Provisional | None = None
        self._weak: _Provisional | None = None     # a weak candidate waiting for the windows after it
        self._second_look: float | None = None    # time of a candidate waiting for its second look
        # Times of the detector's recent weaker peaks (push_detector_peak); a window peak is decided
        # at most a few seconds after the change it places.
        self._detector_peaks: deque[float] = deque(maxlen=64)
        c = self.config
        self._clusters = OnlineClusters(c.max_speakers, c.centroid_max_count, enrolled)
        # Every window's speech and the frame-level speech (push_speech), for `turns` and the change
        # times' snap to onsets.
        self.speech = SpeechActivity()
        # Recent speech windows, enough to look back over a change and the windows that decide it.
        self._recent: deque[_SpeechWindow] = deque(maxlen=c.hysteresis + 2 * c.windows_per_span + 2)
        # Jumps of the last speech windows, those in _recent included, for the relative peak test.
        self._jumps: deque[float] = deque(maxlen=c.peak_history + self._recent.maxlen)
        self._pending: list[_SpeechWindow] = []   # agreeing windows before the first speaker is known
        # Windows that agreed with the current speaker, applied to its centroid only once they
        # can no longer turn out to straddle a change confirmed later.
        self._deferred: deque[_SpeechWindow] = deque()
        self._current: int | None = None
        self._change_times: list[float] = []   # label timeline: speaker _change_labels[i] from _change_times[i]
        self._change_labels: list[int] = []
        self._last_was_speech = False
        self._onset = 0.0
        self._finished = False

    # ------------------------------------------------------------------ input

    def push(self, start_s: float, end_s: float, embedding: np.ndarray | None,
             speech_fraction: float) -> list[SpeakerChange]:
        """Add one window [start_s, end_s) and return the changes it confirms (0 or 1).

        embedding : np.ndarray, shape = (E,), or None for a window without speech.
        speech_fraction : fraction of the window that is speech, in [0, 1].
        """
        if self._finished:
            raise RuntimeError("push() after finish()")
        start_s, end_s, speech_fraction = float(start_s), float(end_s), float(speech_fraction)
        if not (math.isfinite(start_s) and math.isfinite(end_s) and end_s > start_s >= 0.0):
            raise ValueError(f"bad window [{start_s}, {end_s})")
        if not 0.0 <= speech_fraction <= 1.0:
            raise ValueError(f"speech_fraction must be in [0, 1], got {speech_fraction}")
        index = len(self.speech.starts)
        is_speech = self.config.is_speech(embedding, speech_fraction)
        self.speech.add_window(start_s, end_s, speech_fraction if embedding is not None else 0.0)
        if not is_speech:
            self._last_was_speech = False
            return []

        after_silence = not self._last_was_speech
        if after_silence:
            # Speech fills the end of the first window after a pause.
            self._onset = max(start_s, end_s - speech_fraction * (end_s - start_s))
        self._last_was_speech = True
        e = unit(embedding)
        jump = 1.0 - float(self._recent[-1].e @ e) if self._recent else 0.0
        w = _SpeechWindow(index, start_s, end_s, speech_fraction, e, self._onset, after_silence, jump)
        self._recent.append(w)
        self._jumps.append(jump)
        return self._vote(w)

    def push_candidate(self, time_s: float, before: np.ndarray | None, after: np.ndarray | None,
                       probability: float = 1.0, second_look: bool = False) -> list[SpeakerChange]:
        """A possible change at time_s from a change detector (stream.speakers.ChangeCandidate); returns
        the change it confirms (0 or 1).

        before, after : (E,) embeddings of the speech just before and just after time_s, or None.
        It is a change when they are further apart than detector_verify (cosine distance): a
        detector also fires on a laugh or a change of tone within one voice. Half a second of
        speech after it (detector_after_s) describes a voice roughly: a candidate whose two are
        closer than detector_sure is decided on its second look instead (second_look=True: the
        same candidate again once detector_second_look_s of speech after it is in), later but
        surer. Who speaks after it is decided from `after` as for window peaks (a known speaker
        within new_speaker_threshold keeps the label). Candidates before the first speaker is
        known, or not after the last change, are ignored. A candidate whose probability is below
        detector_threshold but at least detector_weak_threshold is weak: it becomes a change
        only once the `hysteresis` windows after it agree on a voice other than the one before
        it (as after a window peak), later but with a label from full windows.
        """
        if self._finished:
            raise RuntimeError("push_candidate() after finish()")
        time_s = float(time_s)
        if second_look:
            if self._second_look != time_s:
                return []               # decided at its first look
            self._second_look = None
        if self._current is None or before is None:
            return []
        if not time_s > (self._change_times[-1] if self._change_times else 0.0):
            return []
        if probability < min(self.config.detector_threshold, self.config.detector_weak_threshold):
            return []
        a = None if after is None else unit(after)
        distance = None if a is None else 1.0 - float(unit(before) @ a)
        if not second_look and self.config.detector_sure > 0 and (distance is None
                                                                   or distance < self.config.detector_sure):
            self._second_look = time_s
            return []
        if distance is None or distance <= self.config.detector_verify:
            return []
        if probability < self.config.detector_threshold:
            # Weak: a change only if the windows after it confirm (_confirm_weak), like a window peak.
            self._weak = _Provisional(time_s, self._current, False, self._current, [])
            return []
        previous, known = self._current, len(self._clusters)
        events = self._switch(time_s, a, [a], distance)
        if events:
            self._provisional = _Provisional(time_s, self._current, len(self._clusters) > known, previous, [])
        return events

    def push_detector_peak(self, time_s: float, probability: float) -> None:
        """A weaker peak of the change detector (stream.speakers.ChangePeak): with candidates, a
        window peak is a change only near one (detector_support, detector_support_s)."""
        self._detector_peaks.append(float(time_s))

    def push_speech(self, first_frame: int, frame_s: float, speech: np.ndarray) -> None:
        """Per-frame speech activity for the turn boundaries (optional).

        speech : np.ndarray, shape = (n,), of frames [first_frame, first_frame + n), each
                 `frame_s` long from stream start; True / >= 0.5 = speech. Contiguous calls.
        """
        self.speech.add_frames(first_frame, frame_s, speech)

    def finish(self) -> list[SpeakerChange]:
        """End of stream. A peak followed by fewer than `hysteresis` windows (but at least one)
        is decided by those; a peak in the very last window has nothing after it and is not."""
        if self._finished:
            return []
        self._finished = True
        events: list[SpeakerChange] = []
        h = self.config.hysteresis
        if self._current is None:
            if len(self._pending) >= max(2, h - 1):
                events = self._first_speaker_confirmed()
        else:
            for after in range(min(h - 1, len(self._recent) - 1), 0, -1):
                peak = len(self._recent) - 1 - after
                if self._is_peak(peak, look_ahead=True):
                    events = self._decide(peak, list(self._recent)[peak + 1:])
                    break
        self._flush_deferred(math.inf)
        return events

    # ---------------------------------------------------------------- queries

    @property
    def current_label(self) -> str | None:
        """Label of the speaker currently talking (or last heard), None before the first."""
        return None if self._current is None else self._clusters.label_of(self._current)

    @property
    def num_speakers(self) -> int:
        return len(self._clusters)

    def label_at(self, t: float) -> str | None:
        """Label of the confirmed speaker timeline at time t (ignores silence)."""
        i = bisect.bisect_right(self._change_times, t) - 1
        return None if i < 0 else self._clusters.label_of(self._change_labels[i])

    def label_for(self, start_s: float, end_s: float) -> str | None:
        """The label whose speech covers most of [start_s, end_s); for a final's `speaker`.

        Falls back to the timeline label at the interval's middle when no speech of a
        known speaker overlaps it (e.g. the windows over it are all below the speech
        threshold), and None before the first speaker is established.
        """
        overlap: dict[str, float] = {}
        for t in self._turns(start_s, end_s):
            d = min(t.end, end_s) - max(t.start, start_s)
            if d > 0:
                overlap[t.label] = overlap.get(t.label, 0.0) + d
        if overlap:
            return max(overlap.items(), key=lambda kv: kv[1])[0]
        return self.label_at(0.5 * (start_s + end_s))

    def turns(self) -> list[Turn]:
        """The diarization so far: speech intervals with their labels, in time order."""
        span = self.speech.span()
        return [] if span is None else self._turns(*span)

    # -------------------------------------------------------------- internals

    def _vote(self, w: _SpeechWindow) -> list[SpeakerChange]:
        c = self.config
        if self._current is None:
            return self._first_speaker(w)
        events = self._returning_voice(w)
        peak = len(self._recent) - 1 - c.hysteresis     # the window whose successors have all arrived now
        if not events and peak >= 0 and self._is_peak(peak, look_ahead=c.hysteresis > 0):
            run = list(self._recent)[peak + 1:] if c.hysteresis else [w]
            events = self._decide(peak, run)
        if not events and 1.0 - float(self._clusters.centroid(self._current) @ w.e) <= c.change_threshold:
            self._defer(w)
        if not events and self._provisional is not None and w.start >= self._provisional.time - 1e-9:
            events = self._confirm_label(w)
        if not events and self._weak is not None and w.start >= self._weak.time - 1e-9:
            events = self._confirm_weak(w)
        return events

    def _confirm_weak(self, w: _SpeechWindow) -> list[SpeakerChange]:
        """A weak candidate's change: once `hysteresis` (at least one) windows after it are in, a
        change at its time if they agree on a voice other than the speaker before it (_other_voice)."""
        p = self._weak
        p.windows.append(w.e)
        if len(p.windows) < max(1, self.config.hysteresis):
            return []
        self._weak = None
        voice = self._other_voice(p.windows, self._clusters.centroid(p.previous))
        if voice is None:
            return []
        mean, distance = voice
        return self._switch(p.time, mean, p.windows, distance)

    def _confirm_label(self, w: _SpeechWindow) -> list[SpeakerChange]:
        """Collect the windows after a candidate's change; once `hysteresis` (at least one) are in,
        decide who speaks from them as after a window peak and, if that is not the label given,
        restate the change: a SpeakerChange at the same time with the corrected label (the previous
        speaker's label when they are within detector_retract of its centroid: no change after all)."""
        p = self._provisional
        p.windows.append(w.e)
        if len(p.windows) < max(1, self.config.hysteresis):
            return []
        self._provisional = None
        mean = _mean_direction(p.windows)
        sims = self._clusters.similarities(mean)
        if self.config.detector_retract > 0 and 1.0 - float(sims[p.previous]) <= self.config.detector_retract:
            target = p.previous     # the voice before the change: no change after all (retracted)
        else:
            others = [int(i) for i in np.argsort(-sims) if i != p.previous and not (p.created and i == p.label)]
            target = others[0] if others and 1.0 - float(sims[others[0]]) <= self.config.new_speaker_threshold \
                else None
        if target is None and (p.created or self._clusters.full):
            return []     # a new voice, as given (or no room for one)
        if target == p.label:
            return []
        if p.created and p.label == len(self._clusters) - 1:
            self._clusters.drop_last()     # opened on half a second of speech that was someone known
        if target is None:
            target = self._clusters.add(p.windows)
        else:
            for e in p.windows:
                self._clusters.update(target, e)
        self._current = target
        self._change_labels[-1] = target
        if self._weak is not None and self._weak.previous == p.label:
            self._weak.previous = target      # a weak candidate since then is measured against the right voice
        score = float(np.clip(1.0 - float(self._clusters.centroid(p.previous) @ mean), 0.0, 1.0))
        return [SpeakerChange(time=p.time, from_speaker=self._clusters.label_of(p.previous),
                              to_speaker=self.current_label, score=score)]

    def _returning_voice(self, w: _SpeechWindow) -> list[SpeakerChange]:
        """The change for `w` (the newest window) when its jump rises above the peak thresholds and
        it is already within return_threshold of a known speaker other than the current one; else []."""
        c = self.config
        k = len(self._recent) - 1
        if c.return_threshold <= 0 or c.hysteresis == 0 or k < 1 or w.jump < self._recent[k - 1].jump:
            return []
        if not self._is_peak(k, look_ahead=False):
            return []
        if self._closest_other(w.e)[1] > c.return_threshold:
            return []
        return self._decide(k, [w])

    def _is_peak(self, k: int, look_ahead: bool) -> bool:
        """Is the jump of self._recent[k] above peak_threshold (and standing out, see _stands_out)
        and, with look_ahead, a peak: at least its predecessor's and greater than its successor's?
        (Without look-ahead, i.e. hysteresis 0, every such jump counts.)"""
        r, c = self._recent, self.config
        if r[k].jump <= c.peak_threshold or not self._stands_out(k):
            return False
        if not look_ahead:
            return True
        return (k == 0 or r[k].jump >= r[k - 1].jump) and k + 1 < len(r) and r[k].jump > r[k + 1].jump

    def _stands_out(self, k: int) -> bool:
        """Is the jump of self._recent[k] above peak_ratio x the median jump of the (up to)
        peak_history speech windows before it? True while fewer than 10 are known."""
        c = self.config
        if c.peak_ratio <= 0:
            return True
        after = len(self._recent) - k            # window k and those after it, the newest in _jumps
        history = list(self._jumps)[:-after][-c.peak_history:]
        return len(history) < 10 or self._recent[k].jump > c.peak_ratio * float(np.median(history))

    def _first_speaker(self, w: _SpeechWindow) -> list[SpeakerChange]:
        """Before anyone is known: `hysteresis` consecutive windows (at least one) that agree
        with each other open S1."""
        c = self.config
        keep = 0
        for p in reversed(self._pending):
            if 1.0 - float(p.e @ w.e) > c.change_threshold:
                break
            keep += 1
        self._pending = self._pending[len(self._pending) - keep:] + [w]
        if len(self._pending) >= max(1, c.hysteresis):
            return self._first_speaker_confirmed()
        return []

    def _first_speaker_confirmed(self) -> list[SpeakerChange]:
        run, self._pending = self._pending, []
        mean = _mean_direction([p.e for p in run])
        time = self._change_time(None, run[0])
        self._current = self._enrolled_voice(mean)
        if self._current is None:
            self._current = self._clusters.add([p.e for p in run])
        else:
            for p in run:
                self._clusters.update(self._current, p.e)
        self._change_times.append(time)
        self._change_labels.append(self._current)
        score = float(np.clip(np.mean([p.e @ mean for p in run]), 0.0, 1.0))
        return [SpeakerChange(time=time, from_speaker=None, to_speaker=self.current_label, score=score)]

    def _enrolled_voice(self, mean: np.ndarray) -> int | None:
        """The enrolled speaker whose voice unit vector `mean` (E,) is, when one is within
        new_speaker_threshold (or when the cap leaves no room for anyone else); else None."""
        if not self._clusters.enrolled:
            return None
        sims = self._clusters.similarities(mean)[:self._clusters.enrolled]
        best = int(np.argmax(sims))
        return best if 1.0 - float(sims[best]) <= self.config.new_speaker_threshold or self._clusters.full else None

    def _decide(self, peak: int, run: list[_SpeechWindow]) -> list[SpeakerChange]:
        """Who speaks in `run` (the windows after the peak at self._recent[peak])? A change
        event when it is someone other than the current speaker, else nothing."""
        c = self.config
        # Compare with the current speaker's recent voice, the windows before the peak since its
        # turn began: a centroid gathered over a whole meeting is blurred, the last seconds are not.
        since = self._change_times[-1] if self._change_times else 0.0
        before = [w.e for w in list(self._recent)[:peak] if w.start >= since]
        old = _mean_direction(before) if before else self._clusters.centroid(self._current)
        voice = self._other_voice([p.e for p in run], old)
        if voice is None:
            return []
        mean, distance = voice
        time = self._change_time(peak, self._recent[peak])
        if self.candidates and self._change_times and time - self._change_times[-1] < c.detector_window_gap_s:
            return []     # the change the detector already reported (it reacts sooner), seen again by the windows
        if self.candidates and c.detector_support > 0 and c.detector_support_s > 0 and \
                distance < c.detector_support_waived and \
                not any(abs(t - time) <= c.detector_support_s for t in self._detector_peaks):
            return []     # the detector heard nothing there: a change of what is said, not of who says it
        return self._switch(time, mean, [p.e for p in run], distance)

    def _other_voice(self, run: list[np.ndarray], old: np.ndarray) -> tuple[np.ndarray, float] | None:
        """The voice of the windows `run` (unit embeddings (E,)) after a possible change: (their unit
        mean (E,), its cosine distance to the voice before, `old` (E,)) when they agree with each other
        (each within change_threshold of their mean) and differ from `old` by more than change_threshold;
        None when they disagree (no single voice to follow yet) or sound like `old` (a noisy window or
        a false candidate, not a change)."""
        c = self.config
        mean = _mean_direction(run)
        if any(1.0 - float(e @ mean) > c.change_threshold for e in run):
            return None
        distance = 1.0 - float(old @ mean)
        return (mean, distance) if distance > c.change_threshold else None

    def _switch(self, time: float, mean: np.ndarray, embeddings: list[np.ndarray], change_distance: float
                ) -> list[SpeakerChange]:
        """Change at `time` to the voice with unit mean `mean` (E,) of `embeddings`: the closest other
        known speaker within new_speaker_threshold, else a new label (at the cap: the closest one).
        `change_distance` (cosine, from the voice before) is the event's score, clipped to [0, 1]."""
        c = self.config
        score = float(np.clip(change_distance, 0.0, 1.0))
        target, distance = self._closest_other(mean)
        if target is not None and distance > c.new_speaker_threshold and not self._clusters.full:
            target = None
        if target is None and self._clusters.full:
            return []     # at the cap with no one else known (max_speakers 1)
        self._provisional = None
        self._weak = None
        # Deferred windows that end after the change contain the new speaker: drop them.
        self._flush_deferred(time)
        if target is None:
            target = self._clusters.add(embeddings)
        else:
            for e in embeddings:
                self._clusters.update(target, e)
        previous = self.current_label
        self._current = target
        self._change_times.append(time)
        self._change_labels.append(target)
        return [SpeakerChange(time=time, from_speaker=previous, to_speaker=self.current_label, score=score)]

    def _closest_other(self, e: np.ndarray) -> tuple[int | None, float]:
        """The known speaker other than the current one closest to unit vector e (E,), and its
        cosine distance; (None, inf) when there is none."""
        sims = self._clusters.similarities(e)
        others = [i for i in np.argsort(-sims) if i != self._current]
        if not others:
            return None, math.inf
        return int(others[0]), 1.0 - float(sims[others[0]])

    def _change_time(self, peak: int | None, first: _SpeechWindow) -> float:
        """When did the new voice start? `first` is the window at the peak (self._recent[peak]),
        or the first speaker's first window (peak None). See the module docstring."""
        lo = self._change_times[-1] if self._change_times else 0.0
        hi = first.end
        if peak is None or first.after_silence:
            t = first.onset
        else:
            # The largest step between neighbouring windows is where the new voice took over
            # half of the window: the step from the window before the peak to the peak window
            # lies between their middles. A parabola through the jumps around the peak places
            # it between hops (a noisy jump can shift the peak by one hop).
            t = 0.5 * (first.start + first.end)
            if peak > 0:
                before = self._recent[peak - 1]
                hop = first.start - before.start
                t -= 0.5 * hop
                if peak < len(self._recent) - 1:
                    d0, d1, d2 = (self._recent[peak + i].jump for i in (-1, 0, 1))
                    curvature = d0 - 2.0 * d1 + d2
                    if curvature < 0:
                        t += float(np.clip(0.5 * (d0 - d2) / curvature, -0.5, 0.5)) * hop
            t = max(t, first.onset)
        return self._snap(min(max(t, lo), hi), lo, hi)

    def _snap(self, t: float, lo: float, hi: float) -> float:
        """Turns change at pauses: move t to the onset that follows the longest pause (>= 0.1 s,
        counted up to 1 s) within snap_s of it and inside (lo, hi]; t itself if there is none
        or no frame-level speech is known there."""
        fs = self.speech.frame_s
        if self.config.snap_s <= 0 or fs is None:
            return t
        sp = self.speech.frames()
        a = max(1, int(math.ceil(max(lo + 1e-6, t - self.config.snap_s) / fs)))
        b = min(len(sp), int(math.floor(min(hi, t + self.config.snap_s) / fs)) + 1)
        min_gap, max_gap = max(1, round(0.1 / fs)), max(1, round(1.0 / fs))
        best, best_key = t, None
        for i in range(a, b):
            if not sp[i] or sp[i - 1]:
                continue
            before = sp[max(0, i - max_gap):i][::-1]
            gap = int(np.argmax(before)) if before.any() else len(before)
            if gap < min_gap and i - gap > 0:
                continue
            key = (min(gap, max_gap), -abs(i * fs - t))
            if best_key is None or key > best_key:
                best, best_key = i * fs, key
        return best

    def _defer(self, w: _SpeechWindow) -> None:
        self._deferred.append(w)
        # A window can straddle a change confirmed at most `hysteresis` windows later.
        while self._deferred and self._deferred[0].index < w.index - self.config.hysteresis - 1:
            self._clusters.update(self._current, self._deferred.popleft().e)

    def _flush_deferred(self, before: float) -> None:
        """Apply deferred updates of windows ending by `before`; forget the rest."""
        while self._deferred:
            w = self._deferred.popleft()
            if w.end <= before and self._current is not None:
                self._clusters.update(self._current, w.e)

    def _turns(self, t0: float, t1: float) -> list[Turn]:
        """Labelled speech intervals within [t0, t1]."""
        return self.speech.turns(t0, t1, self._change_times, self.label_at, self.config.min_pause_s)
