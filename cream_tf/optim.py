"""Optimizers and learning-rate schedules of the search and the retrain.

`PathSGD` (the search) is SGD that updates only the variables the trained path used. With one
graph for every path, the gradient of a block the path skipped is zero rather than absent; a
stock optimizer would still move it (momentum, weight decay). PyTorch, where the official code
runs, skips parameters without a gradient. This optimizer does the same: the variables are
split into groups (one per candidate block, plus the shared parts) and each group's update runs
under one condition saying whether the path used it.

`TFRMSprop` and `RecipeSchedule` are the retrain's (the paper's recipe); `linear_decay` is the
search's schedule.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from cream_tf.keras_internals import rmsprop_mean_squares


class PathSGD:
    """SGD with (Nesterov) momentum and coupled weight decay, as torch.optim.SGD.

    Works in a replica context of any tf.distribute strategy: gradients are summed over
    replicas (scale each replica's loss by the global batch), then every device applies the
    same update to its copy.

    Args:
      variables: the variables to train.
      groups: lists of indices into `variables` that are used together; `apply` takes one
        boolean per group.
      decay: per variable, whether weight decay applies.
    """

    def __init__(
        self,
        variables,
        groups: list[list[int]],
        decay: list[bool],
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        clip_norm: float | None = None,
        name: str = "sgd",
    ):
        self.variables = list(variables)
        self.groups = [list(g) for g in groups]
        if sorted(i for g in self.groups for i in g) != list(range(len(self.variables))):
            raise ValueError("groups must cover every variable exactly once.")
        self.decay = list(decay)
        self.momentum, self.nesterov = momentum, nesterov
        self.weight_decay, self.clip_norm = weight_decay, clip_norm
        self.momenta = [
            keras.Variable(np.zeros(v.shape, v.dtype), trainable=False, name=f"{name}_momentum_{i}")
            for i, v in enumerate(self.variables)
        ]
        self.iterations = keras.Variable(0, dtype="int64", trainable=False, name=f"{name}_iterations")

    def apply(self, grads, used, lr):
        """grads: per variable (this replica's part); used: per group, a boolean (tensor).
        Returns the gradients' global norm (summed over replicas, before clipping)."""
        grads = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g) for g, v in zip(grads, self.variables)]
        used = [tf.convert_to_tensor(u) for u in used]
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        norm = tf.linalg.global_norm(grads)
        if self.clip_norm:
            grads, _ = tf.clip_by_global_norm(grads, self.clip_norm, use_norm=norm)
        if tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context():
            self._apply(tf.distribute.get_strategy(), grads, used, lr)
        elif tf.distribute.has_strategy():
            context.merge_call(self._apply, args=(grads, used, lr))
        else:
            self._apply(tf.distribute.get_strategy(), grads, used, lr)
        return norm

    def _apply(self, strategy, grads, used, lr):
        local = strategy.experimental_local_results
        variables = [local(v.value) for v in self.variables]  # [variable][device]
        momenta = [local(m.value) for m in self.momenta]
        grads = [local(g) for g in grads]
        used = [local(u) for u in used]
        lrs = local(lr)
        for d in range(len(variables[0])):
            with tf.device(variables[0][d].device):
                for group, group_used in zip(self.groups, used):

                    def step(group=group, d=d):
                        for i in group:
                            self._update(
                                variables[i][d], momenta[i][d], grads[i][d], lrs[min(d, len(lrs) - 1)], self.decay[i]
                            )
                        return tf.constant(True)

                    flag = tf.get_static_value(group_used[d])
                    if flag is None:
                        tf.cond(group_used[d], step, lambda: tf.constant(False))
                    elif flag:
                        step()
        self.iterations.assign_add(1)

    def _update(self, variable, momentum, grad, lr, decay):
        g = grad + self.weight_decay * variable if decay and self.weight_decay else grad
        m = self.momentum * momentum + g
        momentum.assign(m)
        variable.assign_sub(lr * (g + self.momentum * m if self.nesterov else m))

    @property
    def slots(self) -> list:
        return [*self.momenta, self.iterations]


def decays(variables) -> list[bool]:
    """Weight decay on conv and dense kernels only, not on BatchNorm parameters or biases."""
    return [len(v.shape) > 1 for v in variables]


def linear_decay(lr: float, warmup_steps: int, total_steps: int, step: int) -> float:
    """The search's schedule: linear warm-up (optional) to lr, then linear decay to zero at the
    last step. Computed on the host in float64, so every step's rate is one exact constant."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    return lr * max(0.0, 1.0 - (step - warmup_steps) / max(1, total_steps - warmup_steps))


class TFRMSprop(keras.optimizers.RMSprop):
    """RMSprop as TF1's RMSPropOptimizer and timm's RMSpropTF (what the paper trained with).

    Keras 3's update already has their form, checked in keras/src/optimizers/rmsprop.py:
    ms = rho * ms + (1 - rho) * g^2, mom = momentum * mom + lr * g / sqrt(ms + epsilon),
    w -= mom. Epsilon sits INSIDE the square root, as in TF1 and RMSpropTF (PyTorch's own
    RMSprop is the one that adds it outside), and the learning rate inside the momentum. What
    differs is the start: Keras starts the mean square at zero, TF1 and timm at one. From zero,
    the first update is lr * g / sqrt(0.1 g^2 + 1e-3), about 3.2 lr per weight whatever the
    gradient's size; from one it is about lr * g.
    """

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        for velocity in rmsprop_mean_squares(self):
            velocity.assign(tf.ones(velocity.shape, velocity.dtype))


class RecipeSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to the peak, then step decay (counted from step 0, as timm) or a cosine."""

    def __init__(self, recipe, batch_size: int, steps_per_epoch: int):
        self.peak = recipe.lr * batch_size / recipe.lr_batch_size
        self.warmup_lr = recipe.warmup_lr
        self.warmup_steps = recipe.warmup_epochs * steps_per_epoch
        self.total_steps = recipe.epochs * steps_per_epoch
        self.decay_steps = recipe.decay_epochs * steps_per_epoch
        self.decay_rate = recipe.decay_rate
        self.kind = recipe.lr_schedule

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warming = self.warmup_lr + (self.peak - self.warmup_lr) * step / max(self.warmup_steps, 1.0)
        if self.kind == "step":
            after = self.peak * self.decay_rate ** tf.floor(step / self.decay_steps)
        else:
            progress = tf.clip_by_value(
                (step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1.0), 0.0, 1.0
            )
            after = 0.5 * self.peak * (1.0 + tf.cos(math.pi * progress))
        return tf.where(step < self.warmup_steps, warming, after)
