"""Path sampling for the reference: cream_tf's rule, or the official loop's.

cream_tf samples each position's choice from the prior and rejects the path until its FLOPs fall
in the configured range. The official loop (lib/core/train.py, `train_epoch`) calls
`PrioritizedBoard.get_cand_with_prob(prob)`, which draws `np.random.choice(self.choice_num, item,
prob)`: the prior lands in numpy's third parameter, `replace`, not in `p`, so every choice is
equally likely; and nothing is rejected (the FLOPs range only sizes the supernet, and the path's
FLOPs are computed for the board).
"""

from __future__ import annotations

import numpy as np

from reference.supernet import NUM_CHOICES, TimmSupernet, macs_of_path


class Sampler:
    """`sample()` -> (path, multiply-adds). FLOPs are counted on the timm supernet by forward
    hooks: a path's count is the all-0 path's plus, per position, what its choice adds over 0
    (a block's cost depends on its own choice only: the stage widths are fixed)."""

    def __init__(
        self,
        net: TimmSupernet,
        input_size: int,
        in_chans: int,
        flops_range: tuple[float, float],
        prior=(),
        seed: int = 0,
        official: bool = False,
        max_tries: int = 10000,
    ):
        positions = len(net.candidates)
        self.base = macs_of_path(net, (0,) * positions, input_size, in_chans)
        self.extra = [
            [
                macs_of_path(net, tuple(c if q == p else 0 for q in range(positions)), input_size, in_chans) - self.base
                for c in range(NUM_CHOICES)
            ]
            for p in range(positions)
        ]
        self.low, self.high = (float(v) * 1e6 for v in flops_range)
        self.prior = np.asarray(prior, np.float64) if len(prior) else None
        self.rng = np.random.default_rng(seed)
        self.official, self.max_tries = official, max_tries

    def macs(self, path) -> int:
        return self.base + sum(self.extra[p][int(c)] for p, c in enumerate(path))

    def sample(self) -> tuple[tuple[int, ...], int]:
        positions = len(self.extra)
        if self.official:
            path = tuple(int(c) for c in self.rng.integers(0, NUM_CHOICES, positions))
            return path, self.macs(path)
        for _ in range(self.max_tries):
            path = tuple(int(c) for c in self.rng.choice(NUM_CHOICES, size=positions, p=self.prior))
            macs = self.macs(path)
            if self.low <= macs <= self.high:
                return path, macs
        raise ValueError(f"no path within [{self.low:g}, {self.high:g}] after {self.max_tries} samples")
