"""Online clustering of speaker embeddings: one centroid per speaker, capped.

Used by `decoders.speaker.SpeakerTracker`. Embeddings are compared by cosine
similarity; each centroid is the running mean of the unit-length embeddings
assigned to it, with the weight of a new embedding floored at `1 / max_count`
so that a centroid keeps following a voice that drifts over a long meeting
(microphone moves, the speaker gets louder) instead of freezing after the first
minutes.

Enrolled speakers (a name and an embedding of a recording of their voice) are clusters
from the start, labelled by their names; the voices nobody enrolled are S1, S2, ...
"""

from __future__ import annotations

import re

import numpy as np


def unit(x: np.ndarray) -> np.ndarray:
    """L2-normalise a vector.

    x : np.ndarray, shape = (E,)
    Returns float64 (E,). Raises ValueError for a zero or non-finite vector,
    which no speaker encoder should produce for speech.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(x)):
        raise ValueError("speaker embedding contains NaN or inf")
    n = float(np.linalg.norm(x))
    if n == 0.0:
        raise ValueError("speaker embedding is all zeros")
    return x / n


_ANONYMOUS = re.compile(r"S[0-9]+")


def check_speaker_name(name: str) -> str:
    """An enrolled speaker's name as it will label finals, RTTM turns and subtitles: 1-32 characters
    without whitespace, and not S<number>, which labels the voices nobody enrolled."""
    if not isinstance(name, str) or not 1 <= len(name) <= 32 or any(ch.isspace() for ch in name):
        raise ValueError(f"a speaker name must be 1-32 characters without spaces, got {name!r}")
    if _ANONYMOUS.fullmatch(name):
        raise ValueError(f"speaker name {name!r} would be taken for an unenrolled voice's label (S1, S2, ...)")
    return name


class OnlineClusters:
    """Speaker centroids with stable labels: enrolled names first, then S1, S2, ... in order of creation.

    Parameters
    ----------
    max_speakers : the cap, enrolled speakers included; `add` refuses to open more clusters.
    max_count : the running mean weights a new embedding by 1/min(count, max_count).
    enrolled : name -> embedding (E,) of that speaker's recorded voice; each is a cluster from the
               start, counted as `max_count` embeddings (it has heard a whole recording) and
               still following the voice as the stream goes on.
    """

    def __init__(self, max_speakers: int, max_count: int = 50, enrolled: dict[str, np.ndarray] | None = None):
        if max_speakers < 1:
            raise ValueError(f"max_speakers must be >= 1, got {max_speakers}")
        if max_count < 1:
            raise ValueError(f"max_count must be >= 1, got {max_count}")
        enrolled = dict(enrolled or {})
        if len(enrolled) > max_speakers:
            raise ValueError(f"{len(enrolled)} enrolled speakers but max_speakers is {max_speakers}")
        for name in enrolled:
            check_speaker_name(name)
        self.max_speakers = max_speakers
        self.max_count = max_count
        self.names = list(enrolled)            # labels of the first len(names) clusters
        self._means: list[np.ndarray] = [unit(e) for e in enrolled.values()]   # running means of unit vectors, (E,) each
        self._counts: list[int] = [max_count] * len(enrolled)

    def __len__(self) -> int:
        return len(self._means)

    @property
    def full(self) -> bool:
        return len(self._means) >= self.max_speakers

    @staticmethod
    def label(index: int) -> str:
        """The label of the index-th voice nobody enrolled (0 -> S1)."""
        return f"S{index + 1}"

    def label_of(self, index: int) -> str:
        """The label of cluster `index`: an enrolled speaker's name, else S1, S2, ..."""
        n = len(self.names)
        return self.names[index] if index < n else self.label(index - n)

    @property
    def enrolled(self) -> int:
        """How many clusters are enrolled speakers (indexes 0 .. enrolled - 1)."""
        return len(self.names)

    def centroid(self, index: int) -> np.ndarray:
        """Unit-length centroid of cluster `index`, shape (E,)."""
        m = self._means[index]
        n = float(np.linalg.norm(m))
        # Opposite embeddings can cancel exactly; fall back to the raw mean direction.
        return m / n if n > 0 else m

    def similarities(self, e: np.ndarray) -> np.ndarray:
        """Cosine similarity of unit vector `e` (E,) to every centroid -> (K,)."""
        if not self._means:
            return np.zeros(0)
        c = np.stack([self.centroid(i) for i in range(len(self._means))])  # (K, E)
        if c.shape[1] != e.shape[0]:
            raise ValueError(f"embedding size {e.shape[0]} differs from earlier ones ({c.shape[1]})")
        return c @ e

    def add(self, vectors: list[np.ndarray]) -> int:
        """Open a new cluster from unit vectors; returns its index."""
        if self.full:
            raise RuntimeError(f"speaker cap reached ({self.max_speakers})")
        if not vectors:
            raise ValueError("a new cluster needs at least one embedding")
        self._means.append(np.mean(np.stack(vectors), axis=0))
        self._counts.append(len(vectors))
        return len(self._means) - 1

    def drop_last(self) -> None:
        """Forget the newest cluster (opened on too little evidence); its label is free again."""
        if len(self._means) <= len(self.names):
            raise RuntimeError("no cluster to drop (enrolled speakers are never dropped)")
        self._means.pop()
        self._counts.pop()

    def update(self, index: int, e: np.ndarray) -> None:
        """Move cluster `index` toward unit vector `e` (E,)."""
        self._counts[index] += 1
        w = 1.0 / min(self._counts[index], self.max_count)
        self._means[index] = self._means[index] + w * (e - self._means[index])
