"""BatchNorm recalibration: moving statistics recomputed as their exact mean over a few batches.

Weights inherited from a supernet carry statistics accumulated over every path that shared
a block, and an EMA of fast-moving weights carries statistics that do not fit its averaged
kernels; a model's own statistics, recomputed on training images, fix both. One traced
function serves every batch (and, on the supernet, every path): the forward runs in training
mode with momentum 0, so each BatchNorm's statistics become the batch's (the unbiased
variance, as PyTorch and the fused op keep it), and are then blended into the running mean
with the weight 1/(i+1) of batch i. BatchNorms the forward does not run (blocks a path
skips) keep their statistics.
"""

from __future__ import annotations

import tensorflow as tf

from cream_tf.blocks import FusedBatchNormalization


def batch_norms(layers) -> list[FusedBatchNormalization]:
    """The fused BatchNorms among `layers` (a model's layers, or blocks' parts)."""
    return [layer for layer in layers if isinstance(layer, FusedBatchNormalization)]


class Recalibrator:
    """`recalibrate(batches, *args)` runs `forward(images, *args)` (a training-mode forward
    through `norms`) on every batch and leaves each norm's moving statistics at their mean."""

    def __init__(self, forward, norms: list[FusedBatchNormalization]):
        if not norms:
            raise ValueError(
                "No fused BatchNorm to recalibrate; valid are models built with fused_bn=True "
                "(the supernet, build_child(..., fused_bn=True))."
            )
        self.norms = norms

        @tf.function
        def blend(images, keep, *args):
            # Read now (a Keras variable's `.value` is the variable itself, read only when used).
            before = [(tf.identity(norm.moving_mean), tf.identity(norm.moving_variance)) for norm in norms]
            momenta = [norm.momentum for norm in norms]
            try:
                for norm in norms:
                    norm.momentum = 0.0  # the forward replaces the statistics with the batch's
                forward(images, *args)
            finally:
                for norm, momentum in zip(norms, momenta):
                    norm.momentum = momentum
            for norm, (mean, variance) in zip(norms, before):
                # Written as an increment, so statistics the forward left alone stay bit for bit.
                norm.moving_mean.assign(mean + (1.0 - keep) * (norm.moving_mean - mean))
                norm.moving_variance.assign(variance + (1.0 - keep) * (norm.moving_variance - variance))

        self._blend = blend

    def recalibrate(self, batches, *args) -> int:
        """batches: image tensors, or (images, labels) pairs; returns how many were used."""
        count = 0
        for count, batch in enumerate(batches, start=1):
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            # Batch i (from 0) enters with weight 1/(i+1): the first replaces, later ones average in.
            self._blend(images, tf.constant((count - 1) / count, tf.float32), *args)
        return count
