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

    def summary(self) -> dict:
        return {"path": list(self.path), "accuracy": round(self.accuracy, 4), "mflops": self.macs / 1e6}


class PrioritizedBoard:
    """At most `size` entries, best first: higher accuracy, then fewer FLOPs.

    A path enters when the board is not full, when it beats the weakest entry by more than
    `accuracy_gap` points, or when it beats it with fewer FLOPs (the paper's rules). Unlike
    the official code, an entry always stores the path's own softmax output, never the
    teacher's (see microsoft/nni pull 3498).
    """

    def __init__(self, size: int, accuracy_gap: float):
        if size < 1:
            raise ValueError(f"board_size must be >= 1; got {size}.")
        self.size = size
        self.accuracy_gap = accuracy_gap
        self.entries: list[Entry] = []

    def __len__(self) -> int:
        return len(self.entries)

    def admits(self, accuracy: float, macs: int) -> bool:
        if len(self.entries) < self.size:
            return True
        weakest = self.entries[-1]
        return accuracy > weakest.accuracy + self.accuracy_gap or (accuracy > weakest.accuracy and macs < weakest.macs)

    def offer(self, entry: Entry) -> bool:
        """Adds `entry` when the rules admit it; returns whether it did."""
        if not self.admits(entry.accuracy, entry.macs):
            return False
        self.entries.append(entry)
        self.entries.sort(key=lambda e: (-e.accuracy, e.macs))
        del self.entries[self.size :]
        return True

    def summary(self) -> list[dict]:
        return [entry.summary() for entry in self.entries]
