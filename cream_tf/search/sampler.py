"""Samples paths from a prior over choices, rejected until their FLOPs (and, given a latency
predictor, their predicted latency) fall in the ranges.

At a position where a candidate is not allowed (a skip at a stage's first block) the prior is
renormalized over the allowed ones."""

from __future__ import annotations

import numpy as np

from cream_tf.arch import SearchSpace
from cream_tf.flops import FlopsTable


class PathSampler:
    """Seeded, checkpointable path sampler.

    Args:
      space: the search space.
      flops_range: (min, max) multiply-adds of the whole network, in MFLOPs.
      prior: probability of each candidate (the official default favours k5 e6); empty = uniform.
      seed: seeds the generator; `state()`/`set_state()` save and restore it exactly.
      max_tries: rejections before giving up with an error.
      latency: a cream_tf.latency.PathLatency, with `latency_range` (min, max) in ms of its
        prediction; None: FLOPs alone bound the paths.
    """

    def __init__(
        self,
        space: SearchSpace,
        flops_range: tuple[float, float],
        prior=(),
        seed: int = 0,
        max_tries: int = 10000,
        latency=None,
        latency_range: tuple[float, float] = (0.0, float("inf")),
    ):
        self.space = space
        self.table = FlopsTable(space)
        self.low, self.high = (float(v) * 1e6 for v in flops_range)
        self.latency, (self.low_ms, self.high_ms) = latency, (float(v) for v in latency_range)
        count = len(space.ops.ops)
        if prior:
            prior = np.asarray(prior, dtype=np.float64)
            if prior.shape != (count,) or (prior < 0).any() or not np.isclose(prior.sum(), 1.0):
                raise ValueError(
                    f"prior must be {count} non-negative probabilities summing to 1, one per candidate "
                    f"({', '.join(op.token for op in space.ops.ops)}); got {list(prior)}."
                )
        self.prior = prior if len(prior) else None
        # Per position, the allowed candidates and their renormalized probabilities.
        self.choices = []
        for allowed in space.allowed():
            weights = np.ones(len(allowed)) if self.prior is None else self.prior[allowed]
            if weights.sum() == 0:
                raise ValueError(
                    f"prior {list(prior)} gives no weight to any candidate allowed at some position "
                    f"(allowed: {[space.ops.ops[c].token for c in allowed]})."
                )
            self.choices.append((np.asarray(allowed), weights / weights.sum()))
        # The paper's space restricts no position: one vectorized draw, the sequence that seeded
        # runs have always drawn.
        self.unrestricted = all(len(allowed) == count for allowed, _ in self.choices)
        self.max_tries = max_tries
        self.rng = np.random.default_rng(seed)
        lowest, highest = self.table.range()
        if highest < self.low or lowest > self.high:
            raise ValueError(
                f"No path of this search space meets the FLOPs range [{self.low / 1e6:g}, "
                f"{self.high / 1e6:g}] MFLOPs: its paths cost from {lowest / 1e6:.2f} to "
                f"{highest / 1e6:.2f} MFLOPs. Change space.flops_min/flops_max or the depths."
            )
        if latency is not None:
            fastest, slowest = latency.range()
            if slowest < self.low_ms or fastest > self.high_ms:
                raise ValueError(
                    f"No path of this search space meets the latency range [{self.low_ms:g}, {self.high_ms:g}] ms: "
                    f"its paths are predicted at {fastest:.4f} to {slowest:.4f} ms ({latency.precision}, "
                    f"{latency.table.threads} thread(s), table {latency.table.path}). Change space.latency_ms."
                )

    def sample(self) -> tuple[np.ndarray, int]:
        """A path (int32, one choice per position) and its multiply-adds."""
        for _ in range(self.max_tries):
            path = self._draw()
            macs = self.table.macs(path)
            if self.low <= macs <= self.high and (
                self.latency is None or self.low_ms <= self.latency_ms(path) <= self.high_ms
            ):
                return path, macs
        bounds = f" and [{self.low_ms:g}, {self.high_ms:g}] ms" if self.latency else ""
        raise ValueError(
            f"No path within [{self.low / 1e6:g}, {self.high / 1e6:g}] MFLOPs{bounds} after "
            f"{self.max_tries} samples from prior {self.prior}; widen the range or "
            "change the prior."
        )

    def latency_ms(self, path) -> float | None:
        """The path's predicted latency; None without a predictor."""
        return None if self.latency is None else self.latency.ms(path)

    def _draw(self) -> np.ndarray:
        if self.unrestricted:
            return self.rng.choice(len(self.space.ops.ops), size=len(self.choices), p=self.prior).astype(np.int32)
        return np.array([self.rng.choice(allowed, p=p) for allowed, p in self.choices], np.int32)

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state
