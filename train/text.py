"""Sentences for synthesis, from public-domain English text shipped by Debian.

Sources: the World English Bible (``sword-text-web``, read with ``diatheke``) and the
``fortunes`` collections. Every sentence is normalised to the model's alphabet
(lowercase a-z, apostrophe, space); sentences that do not normalise cleanly (digits,
abbreviations, symbols a voice would read out) are dropped rather than guessed at,
because a wrong transcript teaches the model more harm than a missing sentence.

Usage: python -m train.text OUT.txt   (one normalised sentence per line, deduplicated)
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ALPHABET = set("abcdefghijklmnopqrstuvwxyz' ")
FORTUNE_DIR = "/usr/share/games/fortunes"
# Collections with mostly prose; the ascii-art, perl, zippy, ... ones read badly.
FORTUNE_FILES = (
    "fortunes", "wisdom", "literature", "people", "platitudes", "humorists", "love",
    "men-women", "work", "education", "food", "pets", "politics", "science", "miscellaneous",
    "riddles", "songs-poems", "sports", "kids", "magic", "medicine", "law", "tao", "goedel",
    "paradoxum", "pratchett", "computers", "news", "drugs", "ethnic", "cookie",
)
MIN_WORDS, MAX_WORDS = 4, 24
MAX_WORD_LEN = 16

_PUNCT_TO_SPACE = re.compile(r"[,;:\-\u2014\u2013\u2012()\[\]\"\u201c\u201d/!?.]")
_SENT_SPLIT = re.compile(r"(?<=[.!?;:])\s+")
_APOS = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'"})


def normalise(sentence: str) -> str | None:
    """Map one raw sentence to the model alphabet, or None if it does not fit cleanly."""
    s = sentence.translate(_APOS).strip()
    if re.search(r"[0-9&@#$%*+=<>_|\\~^{}]", s):
        return None
    # Abbreviations such as "U. S.", "Mr.", "e.g." are read inconsistently by the engines.
    if re.search(r"\b[A-Za-z]\.\s*[A-Za-z]\.|\b(Mr|Mrs|Ms|Dr|St|Jr|Sr|etc|vs|Co|Ltd)\.", s):
        return None
    # All-capital words are read letter by letter by some engines and as words by others.
    if re.search(r"\b[A-Z]{2,}\b", s):
        return None
    s = _PUNCT_TO_SPACE.sub(" ", s).lower()
    s = re.sub(r"\s'|'\s|^'|'$", " ", s)  # quotes, keep only word-internal apostrophes
    s = " ".join(s.split())
    if not s or set(s) - ALPHABET:
        return None
    words = s.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS or max(len(w) for w in words) > MAX_WORD_LEN:
        return None
    if any("'" in w and not re.fullmatch(r"[a-z]+'[a-z]{1,2}|[a-z]+s'", w) for w in words):
        return None
    return s


def bible_sentences() -> list[str]:
    """World English Bible verses split into sentences (raw markup, tags stripped)."""
    raw = subprocess.run(
        ["diatheke", "-b", "engWEB2015eb", "-k", "Gen 1:1 - Rev 22:21"],
        check=True, capture_output=True, text=True,
    ).stdout
    out = []
    for line in raw.splitlines():
        m = re.match(r"^[1-4]?\s?[A-Za-z ]+ \d+:\d+: (.*)$", line)
        if not m:
            continue
        text = re.sub(r"</w>\s*<w", "</w> <w", m.group(1))  # some adjacent words lack a space
        text = re.sub(r"<[^>]+>", "", text)
        out.extend(_SENT_SPLIT.split(text))
    return out


def fortune_sentences() -> list[str]:
    out = []
    for name in FORTUNE_FILES:
        path = Path(FORTUNE_DIR) / name
        if not path.exists():
            continue
        for entry in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            # Attribution lines ("-- Mark Twain") and indented verse are not prose.
            lines = [line for line in entry.splitlines() if not line.strip().startswith("--")]
            out.extend(_SENT_SPLIT.split(" ".join(line.strip() for line in lines)))
    return out


def collect() -> list[str]:
    seen: set[str] = set()
    result = []
    for raw in bible_sentences() + fortune_sentences():
        s = normalise(raw)
        if s and s not in seen:
            seen.add(s)
            result.append(s)
    return result


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    sentences = collect()
    Path(argv[0]).parent.mkdir(parents=True, exist_ok=True)
    Path(argv[0]).write_text("\n".join(sentences) + "\n")
    print(f"{len(sentences)} sentences -> {argv[0]}")


if __name__ == "__main__":
    main()
