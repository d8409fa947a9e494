"""A word bigram language model (ARPA) for the beam search that finalises segments.

Built from the training split of the recipe's sentences only (``synth.sentence_split``),
so the dev and test sentences the numbers are measured on are never in it. Interpolated
Kneser-Ney with one discount: bigram probabilities are discounted counts plus the
history's share of the continuation unigram; the unigrams are continuation probabilities
(in how many distinct contexts a word appears), which suits a backoff distribution.
Written as an ARPA file, which KenLM (the optional ``kenlm`` extra) reads for
``--kenlm``; the text is in-domain (the same Bible and fortunes as the test sentences),
so its gain on the synthetic test set is an upper bound for other text.

Usage: python -m train.lm [--sentences ~/.cache/wavlm-stream/data/sentences.txt]
                          [--out ~/.cache/wavlm-stream/lm.arpa]
"""
from __future__ import annotations

import argparse
import math
from collections import Counter, defaultdict
from itertools import pairwise
from pathlib import Path

from train.synth import DEFAULT_OUT, sentence_split

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
DISCOUNT = 0.75
UNK_LOG10 = -7.0     # <unk> gets a fixed small probability; it takes no mass from real words


def bigram_model(sentences: list[str]) -> tuple[dict[str, float], dict[str, float], dict[tuple[str, str], float]]:
    """Interpolated Kneser-Ney bigram: (unigram probs, backoff weights, bigram probs), all
    natural probabilities (not logs). Unigrams include </s>; <s> only starts histories."""
    bigrams: Counter[tuple[str, str]] = Counter()
    for s in sentences:
        words = [BOS] + s.split() + [EOS]
        bigrams.update(pairwise(words))
    # Continuation counts: in how many distinct histories each word appears.
    continuation: Counter[str] = Counter(w for (_, w) in bigrams)
    total_types = sum(continuation.values())
    unigram = {w: c / total_types for w, c in continuation.items()}
    history_count: Counter[str] = Counter()
    history_types: Counter[str] = Counter()
    followers: dict[str, list[str]] = defaultdict(list)
    for (h, w), c in bigrams.items():
        history_count[h] += c
        history_types[h] += 1
        followers[h].append(w)
    bigram: dict[tuple[str, str], float] = {}
    backoff: dict[str, float] = {}
    for h, n in history_count.items():
        gamma = DISCOUNT * history_types[h] / n          # mass left for the unigram, per history
        for w in followers[h]:
            bigram[(h, w)] = (bigrams[(h, w)] - DISCOUNT) / n + gamma * unigram[w]
        # ARPA backoff: p(w|h) = bow(h) * p(w) for unseen w, so bow(h) spreads the remaining
        # mass over the unseen words in proportion to their unigram probability.
        seen_mass = sum(bigram[(h, w)] for w in followers[h])
        unseen_unigram = 1.0 - sum(unigram[w] for w in followers[h])
        backoff[h] = max(1.0 - seen_mass, 1e-12) / max(unseen_unigram, 1e-12)
    return unigram, backoff, bigram


def write_arpa(path: Path, unigram: dict[str, float], backoff: dict[str, float],
               bigram: dict[tuple[str, str], float]) -> None:
    words = sorted(unigram)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\\data\\\n")
        f.write(f"ngram 1={len(words) + 2}\n")               # + <s> and <unk>
        f.write(f"ngram 2={len(bigram)}\n\n\\1-grams:\n")
        f.write(f"{UNK_LOG10:.6f}\t{UNK}\n")
        f.write(f"-99.000000\t{BOS}\t{math.log10(backoff[BOS]):.6f}\n")
        for w in words:
            line = f"{math.log10(unigram[w]):.6f}\t{w}"
            if w in backoff:
                line += f"\t{math.log10(backoff[w]):.6f}"
            f.write(line + "\n")
        f.write("\n\\2-grams:\n")
        for (h, w), p in sorted(bigram.items()):
            f.write(f"{math.log10(p):.6f}\t{h} {w}\n")
        f.write("\n\\end\\\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentences", type=Path, default=DEFAULT_OUT / "sentences.txt",
                    help="one normalised sentence per line (python -m train.text writes it)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT.parent / "lm.arpa")
    args = ap.parse_args(argv)
    if not args.sentences.is_file():
        raise SystemExit(f"{args.sentences} not found: run `python -m train.text {args.sentences}` first")
    lines = [s.strip() for s in args.sentences.read_text(encoding="utf-8").splitlines() if s.strip()]
    train = [s for s in lines if sentence_split(s) == "train"]
    unigram, backoff, bigram = bigram_model(train)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_arpa(args.out, unigram, backoff, bigram)
    print(f"{args.out}: {len(train)} training sentences of {len(lines)} (dev/test sentences left out), "
          f"{len(unigram)} words, {len(bigram)} bigrams, {args.out.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
