"""Specification of quantization-aware training (cream_tf.twin, cream_tf.qat): the tf_keras twin
computes what the Keras 3 child net computes on the same weights; QAT ends in an all-int8 TFLite
file that gives the QAT model's fake-quantized outputs.

Tiny networks at 32x32 and a few steps, so this runs in about a minute on two cores.
"""

import dataclasses

import numpy as np
import pytest
import tf_keras

from cream_tf import twin
from cream_tf.arch import Arch
from cream_tf.childnet import build_child

# Every block kind: a strided stem (padding layer), ds and ir blocks with SE, residual ir blocks
# (stage 2 has two), dropout in the head.
TINY = Arch.parse("[0][0,2][0][0][0]@32;in=3;classes=10;stem=16/1;dropout=0.2")


def randomized(model, seed=0):
    """`model` with every weight moved off its initial value, BatchNorm statistics included
    (fresh ones, mean 0 and variance 1, would hide a wrong epsilon or a swapped mean)."""
    rng = np.random.default_rng(seed)
    values = []
    for weight in model.weights:
        shape, path = tuple(weight.shape), weight.path
        if "moving_variance" in path:
            values.append(rng.uniform(0.5, 2.0, shape))
        elif "moving_mean" in path:
            values.append(rng.normal(0.0, 0.5, shape))
        elif "gamma" in path:
            values.append(rng.uniform(0.5, 1.5, shape))
        else:
            values.append(np.asarray(weight) + rng.normal(0.0, 0.05, shape))
    model.set_weights([v.astype("float32") for v in values])
    return model


@pytest.fixture(scope="module")
def child():
    model = randomized(build_child(TINY))
    images = np.random.default_rng(1).normal(size=(8, 32, 32, 3)).astype("float32")
    return model, images


def test_the_twin_is_the_same_network_in_tf_keras(child):
    model, images = child
    copy = twin.twin_of(model, TINY, images)
    assert isinstance(copy, tf_keras.Model)
    assert [layer.name for layer in copy.layers] == [layer.name for layer in model.layers]
    assert twin.max_difference(model, copy, images) <= 1e-5
    assert np.abs(np.asarray(model(images, training=False))).max() > 0.1  # not a trivially small output


def test_weights_copy_back_by_layer_name(child):
    model, images = child
    fresh = build_child(TINY)
    twin.copy_weights(twin.twin_of(model, TINY, images), fresh)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), fresh.get_weights()))


def test_the_check_catches_tf_keras_own_hard_sigmoid(child):
    """tf_keras' 'hard_sigmoid' is not relu6(x + 3) / 6: a twin built with it must fail the check."""
    model, images = child
    gate = lambda name: [tf_keras.layers.Activation("hard_sigmoid", name=name)]
    wrong = build_child(TINY, kit=dataclasses.replace(twin.TF_KERAS, hard_sigmoid=gate))
    twin.copy_weights(model, wrong)
    assert twin.max_difference(model, wrong, images) > 1e-3


def test_a_twin_of_another_architecture_is_refused(child):
    model, _ = child
    with pytest.raises(ValueError, match="are not the same network: layers only in the first"):
        twin.copy_weights(model, twin.build_twin(Arch.parse("[0][0][0][0][0]@32;in=3;classes=10;stem=16/1")))
