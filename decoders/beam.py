"""Beam-search finalisation of a segment with pyctcdecode (optional KenLM, hotwords).

Building a pyctcdecode decoder is slow (alphabet normalisation, and with KenLM the model
load and unigram trie), so one ``BeamFinaliser`` is built per pipeline and shared by all
streams: ``decode`` keeps no state between calls (pyctcdecode's decoder only reads its
language model), so concurrent streams may share it.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .ctc import Vocabulary, frame_confidence, frame_time
from .events import Word

__all__ = ["BeamFinaliser", "KENLM_INSTALL_HINT", "LanguageModelError", "check_language_model_file"]

KENLM_INSTALL_HINT = "pip install https://github.com/kpu/kenlm/archive/master.zip  (or: pip install kenlm)"

# pyctcdecode clips log-probabilities at log(1e-15); anything below is "impossible".
_IMPOSSIBLE = -1e4
# pyctcdecode only extends beams with tokens at least this likely (or the frame's argmax);
# passed explicitly because frame compression below relies on it.
_TOKEN_MIN_LOGP = -5.0


def kenlm_available() -> bool:
    return importlib.util.find_spec("kenlm") is not None


class LanguageModelError(ValueError):
    """A ``--kenlm`` file that is not a language model KenLM can read."""


#: How a KenLM binary file starts (``build_binary``'s output).
_KENLM_BINARY_MAGIC = b"mmap lm "


def check_language_model_file(path: str | Path) -> None:
    """Cheap checks of a ``--kenlm`` file before the (slow) load: it exists, the kenlm package is
    there, and it starts as an ARPA file (``\\data\\`` as the first non-empty line) or a KenLM
    binary does. Raises FileNotFoundError, ImportError or LanguageModelError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"KenLM model not found: {path}")
    if not kenlm_available():
        raise ImportError(f"a KenLM model was given ({path}) but the kenlm package is not installed: "
                          + KENLM_INSTALL_HINT)
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(_KENLM_BINARY_MAGIC):
        return
    first = next((line.strip() for line in head.splitlines() if line.strip()), b"")
    if first != b"\\data\\":
        shown = first[:60].decode("utf-8", "replace") if first else "(empty)"
        raise LanguageModelError(f"{path} is not an ARPA or KenLM binary language model: it starts with "
                                 f"{shown!r}, where an ARPA file has \\data\\ (python -m train.lm writes one)")


def _import_pyctcdecode():
    """pyctcdecode warns at import when kenlm is missing; KenLM is an optional extra here
    (a missing one is reported when a model is actually asked for), so keep stderr clean."""
    quiet = [logging.getLogger(f"pyctcdecode.{m}") for m in ("decoder", "language_model")]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.ERROR)
    try:
        from pyctcdecode import build_ctcdecoder
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)
    return build_ctcdecoder


def _kenlm_reason(error: OSError) -> str:
    """The useful part of KenLM's load error: "Cannot read model 'P' (file:line in <C++ signature>
    threw FormatLoadException. REASON)" -> REASON."""
    message = str(error)
    inner = re.search(r"\((.*)\)\s*$", message, re.S)
    reason = inner.group(1) if inner else message
    return re.sub(r"^.*?threw \w+\.\s*", "", reason, flags=re.S).strip()


class BeamFinaliser:
    """CTC prefix beam search over one finished segment.

    vocab: the model's vocabulary. kenlm_path: an ARPA or binary KenLM model (needs the
    ``kenlm`` package), with weights ``alpha`` (LM) and ``beta`` (word insertion bonus);
    ``unigrams``: the LM's word list, read from an ARPA file automatically (give it for a
    binary model). hotwords: words (or phrases) to favour, scored with ``hotword_weight``;
    they are matched in the vocabulary's case (upper-cased for an all-upper-case
    vocabulary, lower-cased for an all-lower-case one). beam_width: beams kept per frame.
    """

    def __init__(
        self,
        vocab: Vocabulary,
        kenlm_path: str | Path | None = None,
        hotwords: Iterable[str] = (),
        hotword_weight: float = 10.0,
        beam_width: int = 32,
        alpha: float = 0.5,
        beta: float = 1.0,
        unigrams: Iterable[str] | None = None,
    ) -> None:
        build_ctcdecoder = _import_pyctcdecode()

        if beam_width < 1:
            raise ValueError(f"beam_width must be >= 1, got {beam_width}")
        self.vocab = vocab
        self.beam_width = int(beam_width)
        self.hotword_weight = float(hotword_weight)
        self.hotwords = tuple(self._match_case(h.strip()) for h in hotwords if h.strip())
        self.kenlm_path = None if kenlm_path is None else str(kenlm_path)
        if self.kenlm_path is not None:
            check_language_model_file(self.kenlm_path)
        # pyctcdecode warns about multi-character labels ("<s>", "</s>"): expected here,
        # since the specials are masked out in decode(). Silence it for this call only.
        alphabet_log = logging.getLogger("pyctcdecode.alphabet")
        level = alphabet_log.level
        alphabet_log.setLevel(logging.ERROR)
        try:
            self._decoder = build_ctcdecoder(
                vocab.pyctcdecode_labels(),
                kenlm_model_path=self.kenlm_path,
                unigrams=None if unigrams is None else list(unigrams),
                alpha=alpha,
                beta=beta,
            )
        except OSError as e:
            raise LanguageModelError(f"cannot read KenLM model {self.kenlm_path}: {_kenlm_reason(e)}") from None
        finally:
            alphabet_log.setLevel(level)
        self._specials = np.array(sorted(vocab.special_ids), dtype=np.int64)
        self.compress_blanks = True  # see _frames_to_search; False only to check it is exact

    def _match_case(self, word: str) -> str:
        skip = self.vocab.special_ids | {self.vocab.blank_id}
        letters = "".join(t for i, t in enumerate(self.vocab.tokens) if i not in skip)
        letters = "".join(c for c in letters if c.isalpha())
        if letters and letters.isupper():
            return word.upper()
        if letters and letters.islower():
            return word.lower()
        return word

    def _fold_specials(self, log_probs: np.ndarray) -> np.ndarray:
        """Normalise rows and move the specials' probability mass onto the blank; (T, V) -> (T, V) float32."""
        lp = np.array(log_probs, dtype=np.float64, copy=True)
        top = lp.max(axis=1, keepdims=True)
        lp = (lp - (top + np.log(np.exp(lp - top).sum(axis=1, keepdims=True)))).astype(np.float32)
        if self._specials.size:
            b = self.vocab.blank_id
            lp[:, b] = np.logaddexp.reduce(
                np.concatenate([lp[:, b : b + 1], lp[:, self._specials]], axis=1), axis=1
            )
            lp[:, self._specials] = _IMPOSSIBLE
        return lp

    def _frames_to_search(self, folded: np.ndarray) -> np.ndarray:
        """Indices (T',) of the frames the beam search needs to see.

        On a frame where every non-blank token is below pyctcdecode's ``token_min_logp``,
        the search can only extend each beam with the blank: every beam gets the same
        score added and the set of beams does not change after the first such frame. So of
        a run of such frames only the first is kept; the result is the same (scores shift
        by a constant) and silence costs nothing. Word frame offsets are mapped back.
        """
        quiet = _blank_only(folded, self.vocab.blank_id)
        drop = quiet.copy()
        drop[1:] &= quiet[:-1]
        drop[0] = False
        return np.flatnonzero(~drop)

    def decode(self, log_probs: np.ndarray, frame_offset: int = 0) -> tuple[str, tuple[Word, ...]]:
        """Best transcript of one segment.

        log_probs: (T, V) float CTC log-probabilities of the segment's frames.
        frame_offset: absolute index of frame 0 (word times are ``(frame_offset + f) * 0.02`` s).
        Returns (text, words): words carry start/end in seconds (from pyctcdecode's word frame
        offsets: first frame of the word's first character to the end of its last
        character's run) and the confidence of ``decoders.ctc.frame_confidence``.
        """
        log_probs = np.asarray(log_probs)
        if log_probs.ndim != 2 or log_probs.shape[1] != len(self.vocab):
            raise ValueError(f"log_probs must be (T, {len(self.vocab)}), got {log_probs.shape}")
        if log_probs.shape[0] == 0:
            return "", ()
        folded = self._fold_specials(log_probs)
        keep = self._frames_to_search(folded) if self.compress_blanks else np.arange(folded.shape[0])
        beams = self._decoder.decode_beams(
            folded[keep],
            beam_width=self.beam_width,
            token_min_logp=_TOKEN_MIN_LOGP,
            hotwords=list(self.hotwords) or None,
            hotword_weight=self.hotword_weight,
        )
        text, word_frames = beams[0][0], beams[0][2]
        ids = folded.argmax(axis=1)
        words = []
        for w, (s, e) in word_frames:
            s, e = int(keep[s]), int(keep[max(e, s + 1) - 1]) + 1  # back to segment frames
            s, e = _snap(ids, s, e, self.vocab.blank_id)
            words.append(Word(w, frame_time(frame_offset + s), frame_time(frame_offset + e), frame_confidence(log_probs, s, e)))
        return text, tuple(words)


def _blank_only(folded: np.ndarray, blank: int) -> np.ndarray:
    """Bool (T,): frames where the search can only extend beams with the blank."""
    nonblank = folded.copy()
    nonblank[:, blank] = -np.inf
    return nonblank.max(axis=1) < _TOKEN_MIN_LOGP


def _snap(ids: np.ndarray, s: int, e: int, blank: int) -> tuple[int, int]:
    """Widen a word's frames [s, e) to whole argmax runs at both ends.

    pyctcdecode merges beams with the same prefix and keeps the frames of one of them, so
    its word bounds can stop a frame short of a repeated character (``OO`` ending at the
    first O). Snapping to the argmax runs makes beam and greedy word times agree.
    ids: (T,) argmax ids of the segment.
    """
    t = ids.shape[0]
    s, e = max(0, min(s, t - 1)), max(1, min(e, t))
    while s > 0 and ids[s] != blank and ids[s - 1] == ids[s]:
        s -= 1
    while e < t and ids[e - 1] != blank and ids[e] == ids[e - 1]:
        e += 1
    return s, max(e, s + 1)
