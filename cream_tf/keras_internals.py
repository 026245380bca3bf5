"""Every use cream_tf makes of Keras' private API, in one place, checked against the Keras it
was written for.

Keras is pinned (requirements.txt); a release that renames or reshapes one of these would
otherwise fail in several modules at once, some of them only hours into a run. Importing this
module on another Keras minor version is an ImportError naming both versions, and
tests/test_keras_internals.py checks each use below against the installed Keras: that the
attribute exists, with the signature and the behaviour relied on.

The uses, and why no public API serves:
- `FitModel._maybe_symbolic_build`: under a strategy, `fit` draws one batch from a first
  iterator of the data to build the model symbolically, then trains on a second iterator; a
  seeded pipeline that reshuffles per iteration would then train on its second order, and an
  exact resume would depend on that. Our models are built when constructed, so it is skipped.
- `make_step_function` (`Model._make_function`): the search's model compiles two step
  functions (the distillation step and the meta update) the way `fit` compiles its one, so
  `fit`, `train_on_batch` and the strategies drive both; Keras' public hook
  (`make_train_function`) makes only one.
- `rmsprop_mean_squares` (`RMSprop._velocities`): TF1's RMSprop starts the mean square at one,
  Keras' at zero (cream_tf.optim.TFRMSprop); the slots are not public.
- QAT runs a tf_keras (Keras 2) model inside a Keras 3 `fit` (cream_tf.qat.QatModel): no private
  attribute, but it relies on Keras 3's TensorFlow trainer calling `train_step` inside a
  tf.function without touching the variables itself; the test runs such a step.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from cream_tf import distribute

SUPPORTED_KERAS = "3.15"  # the minor version these uses were checked against


def check_version(version: str = keras.__version__) -> None:
    if ".".join(version.split(".")[:2]) != SUPPORTED_KERAS:
        raise ImportError(
            f"cream_tf needs Keras {SUPPORTED_KERAS}.x (it relies on Keras internals checked against that "
            f"release, see cream_tf/keras_internals.py), and Keras {version} is installed; install the pinned "
            "version with `pip install -r requirements.txt -c constraints.txt`."
        )


check_version()


class FitModel(keras.Model):
    """Base of the models a run fits: built when constructed, compiled with no loss or metrics,
    so Keras' symbolic build (which would draw a batch from a first iterator of the data) is
    skipped once built."""

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if not self.built:
            super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    @staticmethod
    def step_outputs(outputs: dict) -> dict:
        """What a train_step returns, in the shape Keras can average over the replicas.

        Every replica returns the same global figures; Keras averages them. Across workers
        (MultiWorkerMirroredStrategy with more than one worker) it averages along axis 0, which a
        scalar does not have, so there every value gets a leading axis of one, which the average
        takes off again. Keras tests `strategy.extended._in_multi_worker_mode()`, which is
        `_num_workers > 1`: the number of chief and worker tasks, what cream_tf.distribute.workers
        counts from the public cluster resolver.
        """
        strategy = tf.distribute.get_strategy()
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and distribute.workers(strategy) > 1:
            return {key: value[None] for key, value in outputs.items()}
        return outputs


def make_step_function(model: keras.Model, step):
    """Keras' own compiled step function for `step` (a train_step-like method): given a list of
    batches rather than an iterator, it runs `step` under the model's strategy on each and
    reduces the replicas' outputs, compiled as `fit` would (jit_compile, run_eagerly)."""
    return model._make_function(step)


def rmsprop_mean_squares(optimizer: keras.optimizers.RMSprop) -> list:
    """The running mean squares of a built RMSprop, one per trained variable, in their order."""
    return list(optimizer._velocities)
