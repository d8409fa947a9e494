"""CTC vocabulary, greedy decoding and the per-word confidence.

Frame timing: the conv front end has a total stride of 320 samples at 16 kHz, so one
CTC frame is 20 ms and frame ``i`` covers ``[i * FRAME_S, (i + 1) * FRAME_S)`` seconds.

Token conventions (Wav2Vec2CTCTokenizer ``vocab.json``): ``<pad>`` is the CTC blank,
``|`` the word delimiter; ``<s>``, ``</s>``, ``<unk>`` (any ``<...>`` / ``[...]`` token
other than the blank) are *specials* that never appear in text. Greedy decoding treats a
frame whose argmax is a special exactly like a blank frame (it breaks a run of repeats and
writes nothing); the beam finaliser folds the specials' probability into the blank, which
gives the same argmax.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .events import Word

__all__ = [
    "FRAME_S",
    "frame_time",
    "Vocabulary",
    "TokenRun",
    "collapse",
    "greedy_decode",
    "runs_to_words",
    "frame_confidence",
]

FRAME_S = 0.02  # seconds per CTC frame (320 samples at 16 kHz)

_SPECIAL = re.compile(r"^(<[^<>]+>|\[[^\[\]]+\])$")
_BLANK_NAMES = ("<pad>", "[PAD]", "<blank>", "<eps>")


def frame_time(frame: int) -> float:
    """Start time in seconds of frame ``frame`` (rounded so that 3 * 0.02 prints as 0.06)."""
    return round(frame * FRAME_S, 6)


@dataclass(frozen=True)
class Vocabulary:
    """The CTC output alphabet, in id order.

    ``tokens[i]`` is the string of output id ``i``. ``blank_id`` is the CTC blank,
    ``delimiter_id`` the word delimiter (None when the vocabulary has none: text is then
    one word per segment), ``special_ids`` the other tokens that never appear in text.
    """

    tokens: tuple[str, ...]
    blank_id: int
    delimiter_id: int | None
    special_ids: frozenset[int]

    def __post_init__(self) -> None:
        if len(set(self.tokens)) != len(self.tokens):
            dup = sorted({t for t in self.tokens if self.tokens.count(t) > 1})
            raise ValueError(f"vocabulary has duplicate tokens: {dup}")
        if not 0 <= self.blank_id < len(self.tokens):
            raise ValueError(f"blank id {self.blank_id} outside vocabulary of size {len(self.tokens)}")

    @classmethod
    def from_tokens(cls, tokens, blank: str | None = None, delimiter: str | None = "|") -> "Vocabulary":
        """Build from the token list in id order.

        blank: the blank token; by default the first of ``<pad>``, ``[PAD]``, ``<blank>``,
        ``<eps>`` present. delimiter: the word delimiter (``|``; ``" "`` is used when ``|``
        is absent and a space token exists; None for no delimiter).
        """
        tokens = tuple(str(t) for t in tokens)
        if blank is None:
            blank = next((b for b in _BLANK_NAMES if b in tokens), None)
            if blank is None:
                raise ValueError(f"no CTC blank token in vocabulary (looked for {_BLANK_NAMES}); pass blank=")
        elif blank not in tokens:
            raise ValueError(f"blank token {blank!r} not in vocabulary")
        if delimiter is not None and delimiter not in tokens:
            delimiter = " " if " " in tokens else None
        blank_id = tokens.index(blank)
        delimiter_id = None if delimiter is None else tokens.index(delimiter)
        specials = frozenset(i for i, t in enumerate(tokens) if i != blank_id and _SPECIAL.match(t))
        return cls(tokens, blank_id, delimiter_id, specials)

    @classmethod
    def from_json_file(cls, path, blank: str | None = None, delimiter: str | None = "|") -> "Vocabulary":
        """Read a Wav2Vec2CTCTokenizer ``vocab.json`` (``{token: id}``, ids 0..V-1)."""
        path = Path(path)
        with open(path, encoding="utf-8") as f:
            mapping = json.load(f)
        if not isinstance(mapping, dict) or not all(isinstance(v, int) for v in mapping.values()):
            raise ValueError(f"{path}: expected a flat JSON object {{token: id}} (Wav2Vec2CTCTokenizer format)")
        ids = sorted(mapping.values())
        if ids != list(range(len(ids))):
            raise ValueError(f"{path}: token ids must be exactly 0..{len(ids) - 1}, got {ids[:5]}...")
        tokens = [None] * len(ids)
        for tok, i in mapping.items():
            tokens[i] = tok
        try:
            return cls.from_tokens(tokens, blank=blank, delimiter=delimiter)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def __len__(self) -> int:
        return len(self.tokens)

    def pyctcdecode_labels(self) -> list[str]:
        """Labels for ``pyctcdecode.build_ctcdecoder``: ``""`` for the blank, ``" "`` for the delimiter.

        Specials keep their names (they must stay distinct); the beam finaliser gives them
        zero probability so they are never emitted.
        """
        labels = list(self.tokens)
        labels[self.blank_id] = ""
        if self.delimiter_id is not None:
            labels[self.delimiter_id] = " "
        return labels

    def nonspeech_mask(self) -> np.ndarray:
        """Boolean (V,): True for the blank, the delimiter and the specials (ids that are not speech)."""
        m = np.zeros(len(self.tokens), dtype=bool)
        m[self.blank_id] = True
        if self.delimiter_id is not None:
            m[self.delimiter_id] = True
        m[list(self.special_ids)] = True
        return m

    def blank_map(self) -> np.ndarray:
        """Int (V,): maps every id to itself except specials, which map to the blank."""
        m = np.arange(len(self.tokens))
        m[list(self.special_ids)] = self.blank_id
        return m


@dataclass
class TokenRun:
    """One emitted token of a greedy CTC path: ``token`` over frames ``[start, end)`` (absolute)."""

    token: int
    start: int
    end: int


def collapse(ids: np.ndarray, prev: int, blank: int) -> np.ndarray:
    """Boolean (T,): frames at which a token is emitted by greedy CTC.

    ids: (T,) int, argmax ids with specials already mapped to the blank.
    prev: the id of the frame before ``ids[0]`` (the blank at stream start); passing
    it makes collapsing across push boundaries identical to collapsing in one go.
    """
    before = np.concatenate(([prev], ids[:-1]))
    return (ids != before) & (ids != blank)


def add_to_runs(runs: list[TokenRun], token: int, frame: int, emitted: bool, blank: int) -> None:
    """Grow ``runs`` by one greedy frame (absolute index ``frame``, argmax ``token``).

    An emitted frame (see ``collapse``) starts a run; a repeat of the last run's token on
    the frame right after it extends that run; blanks and other frames leave runs alone.
    The one rule for token runs, used offline by ``greedy_runs`` and frame by frame by the
    incremental transcriber.
    """
    if emitted:
        runs.append(TokenRun(token, frame, frame + 1))
    elif token != blank and runs and runs[-1].token == token and runs[-1].end == frame:
        runs[-1].end = frame + 1


def greedy_runs(log_probs: np.ndarray, vocab: Vocabulary, first_frame: int) -> list[TokenRun]:
    """The token runs of the greedy path of log_probs (T, V), absolute frames from ``first_frame``:
    each emitted token with the frames its repeats cover (as the incremental transcriber builds them)."""
    ids = vocab.blank_map()[np.asarray(log_probs).argmax(axis=-1)]
    emitted = collapse(ids, vocab.blank_id, vocab.blank_id).tolist()
    runs: list[TokenRun] = []
    for k, i in enumerate(ids.tolist()):
        add_to_runs(runs, i, first_frame + k, emitted[k], vocab.blank_id)
    return runs


def greedy_decode(log_probs: np.ndarray, vocab: Vocabulary) -> str:
    """Offline greedy CTC text of log_probs (T, V): words separated by single spaces."""
    ids = vocab.blank_map()[np.asarray(log_probs).argmax(axis=-1)]
    emitted = ids[collapse(ids, vocab.blank_id, vocab.blank_id)]
    words, cur = [], []
    for i in emitted.tolist():
        if i == vocab.delimiter_id:
            if cur:
                words.append("".join(cur))
            cur = []
        else:
            cur.append(vocab.tokens[i])
    if cur:
        words.append("".join(cur))
    return " ".join(words)


def frame_confidence(log_probs: np.ndarray, start: int, end: int) -> float:
    """Confidence of a word spanning frames ``[start, end)`` of log_probs (T, V).

    Defined as the mean over the word's frames of the frame's highest posterior
    probability, ``mean_t max_v p[t, v]``: 1.0 when the model is certain on every frame,
    lower when frames are ambiguous. It measures the acoustic model only (not the language
    model or hotwords). The span includes blank frames between the word's characters (a
    confident blank is a confident frame). Frame indices are relative to ``log_probs``;
    an empty span uses the single frame ``start``. Rows are normalised here, so
    unnormalised logits give the same result as log-probabilities.
    """
    end = max(end, start + 1)
    span = np.asarray(log_probs[start:end], dtype=np.float64)
    if span.shape[0] == 0:
        return 0.0
    top = span.max(axis=-1)
    log_z = top + np.log(np.exp(span - top[:, None]).sum(axis=-1))  # logsumexp per frame
    return float(np.exp(top - log_z).mean())


def runs_to_words(runs: list[TokenRun], vocab: Vocabulary, log_probs: np.ndarray, first_frame: int) -> tuple[Word, ...]:
    """Words of a greedy path, with times and confidence.

    runs: emitted tokens in order (absolute frames). log_probs: (T, V) frames starting at
    absolute frame ``first_frame`` and covering all runs. A word spans from the first
    frame of its first token to the end of its last token's run.
    """
    words: list[Word] = []
    cur: list[TokenRun] = []

    def close() -> None:
        if cur:
            s, e = cur[0].start, cur[-1].end
            conf = frame_confidence(log_probs, s - first_frame, e - first_frame)
            text = "".join(vocab.tokens[r.token] for r in cur)
            words.append(Word(text, frame_time(s), frame_time(e), conf))
            cur.clear()

    for r in runs:
        if r.token == vocab.delimiter_id:
            close()
        else:
            cur.append(r)
    close()
    return tuple(words)
