"""Each use of Keras' private API (cream_tf.keras_internals) against the installed Keras: the
attribute is there, with the signature and behaviour relied on. A Keras release that changes
one fails here, naming it, rather than hours into a run."""

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from keras.src.backend.tensorflow import trainer as keras_tf_trainer
from tensorflow.python.distribute import collective_all_reduce_strategy

from cream_tf import keras_internals
from cream_tf.keras_internals import FitModel
from cream_tf.optim import TFRMSprop


def test_another_keras_minor_version_is_refused_naming_both():
    keras_internals.check_version(keras.__version__)  # the installed one passes
    for other in ("3.16.0", "3.14.2", "2.15.0"):
        with pytest.raises(ImportError, match=rf"needs Keras 3\.15\.x .* Keras {other} is installed"):
            keras_internals.check_version(other)


def test_fit_still_builds_symbolically_through_the_overridden_hook():
    hook = keras_tf_trainer.TensorFlowTrainer._maybe_symbolic_build
    assert list(inspect.signature(hook).parameters) == ["self", "iterator", "data_batch"]
    # fit calls it with the epoch iterator: what FitModel skips once the model is built.
    assert "self._maybe_symbolic_build(iterator=epoch_iterator)" in inspect.getsource(
        keras_tf_trainer.TensorFlowTrainer.fit
    )


class _Doubler(FitModel):
    """A one-weight model whose train step adds the batch's mean to its weight."""

    def __init__(self):
        super().__init__()
        self.w = self.add_weight(shape=(), initializer="zeros", name="w")
        self.built = True

    def train_step(self, batch):
        self.w.assign_add(tf.reduce_mean(batch))
        return self.step_outputs({"w": tf.identity(self.w.value)})


def test_make_step_function_runs_a_step_on_each_given_batch():
    assert list(inspect.signature(keras_tf_trainer.TensorFlowTrainer._make_function).parameters) == [
        "self",
        "step_function",
    ]
    model = _Doubler()
    model.compile(jit_compile=False)
    step = keras_internals.make_step_function(model, model.train_step)
    outputs = step([tf.constant([1.0, 3.0])])
    assert float(outputs["w"]) == 2.0 and float(model.w.numpy()) == 2.0


def test_fit_model_step_outputs_follow_keras_multi_worker_test():
    # Keras averages step outputs along axis 0 when this says multi-worker; FitModel adds that
    # axis under the same condition, read from the public cluster resolver (workers > 1).
    assert "_in_multi_worker_mode()" in inspect.getsource(keras_tf_trainer._collective_all_reduce_multi_worker)
    extended = collective_all_reduce_strategy.CollectiveAllReduceExtended
    assert "self._num_workers > 1" in inspect.getsource(extended._in_multi_worker_mode)
    assert keras_internals.FitModel.step_outputs({"x": tf.constant(1.0)})["x"].shape == ()


def test_rmsprop_mean_squares_are_the_velocities_one_per_variable():
    variables = [keras.Variable(np.zeros((3, 2), np.float32)), keras.Variable(np.zeros((4,), np.float32))]
    plain = keras.optimizers.RMSprop(0.1)
    plain.build(variables)
    squares = keras_internals.rmsprop_mean_squares(plain)
    assert [tuple(s.shape) for s in squares] == [(3, 2), (4,)]
    plain.apply_gradients([(tf.ones((3, 2)), variables[0]), (tf.ones((4,)), variables[1])])
    # Keras' update: ms = rho * ms + (1 - rho) * g^2 from zero, so 0.1 after one step of g = 1.
    np.testing.assert_allclose(squares[0].numpy(), 0.1, rtol=1e-6)
    tf1 = TFRMSprop(0.1)
    tf1.build(variables)
    np.testing.assert_array_equal(keras_internals.rmsprop_mean_squares(tf1)[1].numpy(), np.ones(4))


class _TfKerasStep(FitModel):
    """A tf_keras model and optimizer trained by a Keras 3 `fit`, as QAT's model is."""

    def __init__(self):
        super().__init__()
        self.inner = tf_keras.Sequential([tf_keras.layers.Dense(1, kernel_initializer="zeros")])
        self.inner.build((None, 2))
        self.sgd = tf_keras.optimizers.SGD(0.1)
        self.built = True

    def train_step(self, batch):
        x, y = batch
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((self.inner(x) - y) ** 2)
        variables = self.inner.trainable_variables
        self.sgd.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return self.step_outputs({"loss": loss})


def test_a_tf_keras_model_trains_inside_keras_3_fit():
    model = _TfKerasStep()
    model.compile(jit_compile=False)
    x = np.ones((8, 2), np.float32)
    history = model.fit(tf.data.Dataset.from_tensor_slices((x, np.ones((8, 1), np.float32))).batch(4), verbose=0)
    # Two steps of SGD from zero weights on y = 1: the first loss is 1, and the kernel moved.
    assert history.history["loss"][0] < 1.0
    assert np.all(model.inner.get_weights()[0] > 0)
