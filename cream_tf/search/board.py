"""The prioritized board: the best paths seen so far, each with a slice of its training batch
and its own softmax output on it."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Entry:
    path: tuple[int, ...]
    accuracy: float  # top-1 (percent) on the training batch it was trained on
    macs: int
    images: np.ndarray  # [slice, H, W, C]
    probs: np.ndarray  # [slice, classes]: the path's OWN softmax on `images`
    latency_ms: float | None = None  # predicted (cream_tf.latency), in a latency-bounded search

    def summary(self) -> dict:
        latency = {} if self.latency_ms is None else {"latency_ms": round(self.latency_ms, 4)}
        return {"path": list(self.path), "accuracy": round(self.accuracy, 4), "mflops": self.macs / 1e6, **latency}


class PrioritizedBoard:
    """At most `size` entries, best first: higher accuracy, then the cheaper path.

    A path enters when the board is not full, when it beats the weakest entry by more than
    `accuracy_gap` points, or when it beats it and is cheaper (the paper's rules, with FLOPs as
    the cost; `by_latency`: the predicted latency, in a latency-bounded search). Unlike the
    official code, an entry always stores the path's own softmax output, never the teacher's
    (see microsoft/nni pull 3498).
    """

    def __init__(self, size: int, accuracy_gap: float, by_latency: bool = False):
        if size < 1:
            raise ValueError(f"board_size must be >= 1; got {size}.")
        self.size = size
        self.accuracy_gap = accuracy_gap
        self.cost = (lambda e: e.latency_ms) if by_latency else (lambda e: e.macs)
        self.entries: list[Entry] = []

    def __len__(self) -> int:
        return len(self.entries)

    def admits(self, entry: Entry) -> bool:
        if len(self.entries) < self.size:
            return True
        weakest = self.entries[-1]
        return entry.accuracy > weakest.accuracy + self.accuracy_gap or (
            entry.accuracy > weakest.accuracy and self.cost(entry) < self.cost(weakest)
        )

    def offer(self, entry: Entry) -> bool:
        """Adds `entry` when the rules admit it; returns whether it did."""
        if not self.admits(entry):
            return False
        self.entries.append(entry)
        self.entries.sort(key=lambda e: (-e.accuracy, self.cost(e)))
        del self.entries[self.size :]
        return True

    def summary(self) -> list[dict]:
        return [entry.summary() for entry in self.entries]
