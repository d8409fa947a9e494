"""Diarization metrics for bench/speaker_eval.py: change-point P/R/F1 with a collar, DER, latency.

Turns are (start, end, label) in seconds. Pure numpy (no scipy): the optimal
speaker mapping of DER uses a small Hungarian solver.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from decoders.turns import change_times as reference_changes  # noqa: F401  (re-exported for the bench)


def match_changes(ref: list[float], hyp: list[float], collar: float) -> list[tuple[int, int]]:
    """One-to-one matching of hypothesis to reference change times within +-collar,
    closest pairs first. Returns (ref index, hyp index) pairs."""
    pairs = sorted((abs(r - h), i, j) for i, r in enumerate(ref) for j, h in enumerate(hyp) if abs(r - h) <= collar)
    used_r, used_h, out = set(), set(), []
    for _, i, j in pairs:
        if i not in used_r and j not in used_h:
            used_r.add(i)
            used_h.add(j)
            out.append((i, j))
    return sorted(out)


@dataclass
class ChangeCounts:
    hits: int = 0
    n_ref: int = 0
    n_hyp: int = 0

    def add(self, ref: list[float], hyp: list[float], collar: float) -> list[tuple[int, int]]:
        m = match_changes(ref, hyp, collar)
        self.hits += len(m)
        self.n_ref += len(ref)
        self.n_hyp += len(hyp)
        return m

    @property
    def precision(self) -> float:
        return self.hits / self.n_hyp if self.n_hyp else 1.0

    @property
    def recall(self) -> float:
        return self.hits / self.n_ref if self.n_ref else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def hungarian(cost: np.ndarray) -> list[tuple[int, int]]:
    """Minimum-cost assignment for a rectangular cost matrix -> (row, col) pairs (min(n, m) of them)."""
    cost = np.asarray(cost, dtype=np.float64)
    transposed = cost.shape[0] > cost.shape[1]
    if transposed:
        cost = cost.T
    n, m = cost.shape                      # n <= m
    INF = float("inf")
    u, v = np.zeros(n + 1), np.zeros(m + 1)
    p = np.zeros(m + 1, dtype=int)         # p[j]: row matched to column j (1-based, 0 = none)
    way = np.zeros(m + 1, dtype=int)
    for i in range(1, n + 1):
        p[0] = i
        j0 = 0
        minv = np.full(m + 1, INF)
        used = np.zeros(m + 1, dtype=bool)
        while True:
            used[j0] = True
            i0, delta, j1 = p[j0], INF, 0
            for j in range(1, m + 1):
                if not used[j]:
                    cur = cost[i0 - 1, j - 1] - u[i0] - v[j]
                    if cur < minv[j]:
                        minv[j], way[j] = cur, j0
                    if minv[j] < delta:
                        delta, j1 = minv[j], j
            for j in range(m + 1):
                if used[j]:
                    u[p[j]] += delta
                    v[j] -= delta
                else:
                    minv[j] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while True:
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
            if j0 == 0:
                break
    pairs = [(p[j] - 1, j - 1) for j in range(1, m + 1) if p[j] != 0]
    return sorted((c, r) if transposed else (r, c) for r, c in pairs)


@dataclass
class DERCounts:
    """Seconds of scored reference speech and of each error kind (NIST md-eval definitions)."""

    total: float = 0.0
    miss: float = 0.0
    false_alarm: float = 0.0
    confusion: float = 0.0

    def add(self, other: "DERCounts") -> None:
        self.total += other.total
        self.miss += other.miss
        self.false_alarm += other.false_alarm
        self.confusion += other.confusion

    @property
    def der(self) -> float:
        return (self.miss + self.false_alarm + self.confusion) / self.total if self.total else 0.0


def _activity(turns, labels: list[str], n: int, step: float) -> np.ndarray:
    """(n, len(labels)) bool: which label speaks in each step-long frame (frame centre rule)."""
    a = np.zeros((n, len(labels)), dtype=bool)
    index = {lab: k for k, lab in enumerate(labels)}
    for start, end, label in turns:
        i0 = max(0, int(np.ceil(start / step - 0.5)))
        i1 = min(n, int(np.ceil(end / step - 0.5)))
        a[i0:i1, index[label]] = True
    return a


def diarization_error(ref, hyp, collar: float = 0.25, step: float = 0.01, by_name: bool = False) -> DERCounts:
    """DER counts of hypothesis turns against reference turns.

    collar : seconds on each side of every reference turn boundary left out of scoring
             (0.25 s is the customary forgiveness; 0 scores everything). Overlapped speech
             is scored; speakers are mapped one-to-one to maximise the matched time, or with
             by_name each hypothesis label only to the reference speaker of the same name
             (enrolled speakers: the name itself must be right).
    """
    ref, hyp = list(ref), list(hyp)
    end = max([t[1] for t in ref] + [t[1] for t in hyp] + [0.0])
    n = int(np.ceil(end / step)) + 1
    rl = sorted({t[2] for t in ref})
    hl = sorted({t[2] for t in hyp})
    R = _activity(ref, rl, n, step)
    H = _activity(hyp, hl, n, step)
    scored = np.ones(n, dtype=bool)
    if collar > 0:
        for start, stop, _ in ref:
            for b in (start, stop):
                i0 = max(0, int(np.ceil((b - collar) / step - 0.5)))
                i1 = min(n, int(np.ceil((b + collar) / step - 0.5)))
                scored[i0:i1] = False
    R, H = R[scored], H[scored]
    nr, nh = R.sum(axis=1), H.sum(axis=1)
    # Matched time under the best one-to-one mapping of hypothesis to reference labels.
    matched = 0
    if rl and hl:
        overlap = R.T.astype(np.int64) @ H.astype(np.int64)          # (n_ref, n_hyp) frames
        pairs = ([(r, hl.index(label)) for r, label in enumerate(rl) if label in hl] if by_name
                 else hungarian(-overlap))
        mapped = np.zeros(len(R), dtype=np.int64)
        for r, h in pairs:
            mapped += R[:, r] & H[:, h]
        matched = mapped
    out = DERCounts()
    out.total = float(nr.sum()) * step
    out.miss = float(np.maximum(nr - nh, 0).sum()) * step
    out.false_alarm = float(np.maximum(nh - nr, 0).sum()) * step
    out.confusion = float((np.minimum(nr, nh) - matched).sum()) * step
    return out
