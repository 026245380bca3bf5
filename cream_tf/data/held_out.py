"""The held-out validation split: which training images `validation` takes and `train` leaves out.

`config.seed` fixes the choice, so every run, process and source listing agrees on it; the
`seed` of `load` (shuffling and augmentation) does not change it.
"""

from __future__ import annotations

import numpy as np

from cream_tf.config import DataConfig


def mask(count: int, config: DataConfig) -> np.ndarray:
    """Which of `count` training images form the validation split: a mask fixed by config.seed."""
    _check_validation_size(count, config)
    held = np.zeros(count, bool)
    held[np.random.default_rng(config.seed).permutation(count)[: config.validation_size]] = True
    return held


def block(count: int, config: DataConfig) -> tuple[int, int]:
    """For record streams: a run of validation_size consecutive records at an offset fixed by
    config.seed. ImageNet's and TFDS's shards are shuffled when written, so a run is a random
    sample, and reading it costs validation_size records instead of a pass over the split."""
    _check_validation_size(count, config)
    start = int(np.random.default_rng(config.seed).integers(0, count - config.validation_size + 1))
    return start, start + config.validation_size


def pick(split: str, held: np.ndarray) -> np.ndarray:
    """Indices of the training images in `split` ('train', 'validation' or 'train_full')."""
    if split == "validation":
        return np.flatnonzero(held)
    return np.flatnonzero(~held) if split == "train" else np.arange(len(held))


def _check_validation_size(count: int, config: DataConfig) -> None:
    if config.validation_size >= count:
        raise ValueError(
            f"data.validation_size={config.validation_size} must be smaller than the "
            f"{count} images of the training split."
        )
