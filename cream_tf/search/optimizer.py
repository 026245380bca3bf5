"""SGD that updates only the variables the trained path used.

With one graph for every path, the gradient of a block the path skipped is zero rather than
absent; a stock optimizer would still move it (momentum, weight decay). PyTorch, where the
official code runs, skips parameters without a gradient. This optimizer does the same: the
variables are split into groups (one per candidate block, plus the shared parts) and each
group's update runs under one condition saying whether the path used it.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


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

    def __init__(self, variables, groups: list[list[int]], decay: list[bool], momentum: float = 0.9,
                 nesterov: bool = True, weight_decay: float = 0.0, clip_norm: float | None = None,
                 name: str = "sgd"):
        self.variables = list(variables)
        self.groups = [list(g) for g in groups]
        if sorted(i for g in self.groups for i in g) != list(range(len(self.variables))):
            raise ValueError("groups must cover every variable exactly once.")
        self.decay = list(decay)
        self.momentum, self.nesterov = momentum, nesterov
        self.weight_decay, self.clip_norm = weight_decay, clip_norm
        self.momenta = [keras.Variable(np.zeros(v.shape, v.dtype), trainable=False,
                                       name=f"{name}_momentum_{i}") for i, v in enumerate(self.variables)]
        self.iterations = keras.Variable(0, dtype="int64", trainable=False, name=f"{name}_iterations")

    def apply(self, grads, used, lr) -> None:
        """grads: per variable (this replica's part); used: per group, a boolean (tensor)."""
        grads = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
                 for g, v in zip(grads, self.variables)]
        used = [tf.convert_to_tensor(u) for u in used]
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        if self.clip_norm:
            grads, _ = tf.clip_by_global_norm(grads, self.clip_norm)
        if tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context():
            self._apply(tf.distribute.get_strategy(), grads, used, lr)
        elif tf.distribute.has_strategy():
            context.merge_call(self._apply, args=(grads, used, lr))
        else:
            self._apply(tf.distribute.get_strategy(), grads, used, lr)

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
                            self._update(variables[i][d], momenta[i][d], grads[i][d], lrs[min(d, len(lrs) - 1)],
                                         self.decay[i])
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
