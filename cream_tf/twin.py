"""The tf_keras twin of a child net: the same network, layer for layer and name for name, built of
tf_keras layers, because tensorflow-model-optimization's quantization-aware training works on
tf_keras models only.

Both come from the one builder (`cream_tf.childnet.build_child` over a `LayerKit`). Two layers
are written differently. The SE gate's hard sigmoid: tf_keras' 'hard_sigmoid' activation is
another function (0.2 x + 0.5, clipped), so the twin's gate computes Keras 3's relu6(x + 3) / 6
as an `Activation` of `shifted_relu6` and a `Rescaling` by 1/6. Swish: a `Swish` layer that QAT
can switch to round its sigmoid as TFLite's int8 file does. Hard-swish, which tf_keras lacks: an
`Activation` of `hard_swish`. Weights move between the two by layer name.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras

from cream_tf.arch import Arch
from cream_tf.blocks import LayerKit
from cream_tf.childnet import build_child


def shifted_relu6(x):
    """relu6(x + 3): the hard sigmoid before its division by 6, a tensor of its own in TFLite's
    int8 graph (the + 3 and the relu6 fold into the convolution before it), so QAT quantizes it too."""
    return tf.nn.relu6(x + 3.0)


def _hard_sigmoid(name: str) -> list:
    """relu6(x + 3) / 6, Keras 3's (and PyTorch's) hard sigmoid, as two layers."""
    return [
        tf_keras.layers.Activation(shifted_relu6, name=f"{name}_relu6"),
        tf_keras.layers.Rescaling(1.0 / 6.0, name=name),
    ]


def hard_swish(x):
    """x * relu6(x + 3) / 6, Keras 3's 'hard_swish' (and PyTorch's Hardswish)."""
    return x * shifted_relu6(x) / 6.0


def _activation(kind: str, name: str):
    if kind == "swish":
        return Swish(name=name)
    return tf_keras.layers.Activation(hard_swish if kind == "hard_swish" else kind, name=name)


class Swish(tf_keras.layers.Layer):
    """x * sigmoid(x), Keras' 'swish'. With `rounded_gate`, the sigmoid's output is first rounded to
    a multiple of 1/256 in [0, 255/256], as TFLite's int8 LOGISTIC writes it (its output
    quantization is fixed: scale 1/256, zero point -128), so quantization-aware training sees the
    int8 file's rounding; the gradient passes through the rounding unchanged."""

    def __init__(self, rounded_gate: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.rounded_gate = rounded_gate

    def call(self, x):
        gate = tf.sigmoid(x)
        if self.rounded_gate:
            gate = tf.quantization.fake_quant_with_min_max_args(gate, min=0.0, max=255 / 256, num_bits=8)
        return x * gate

    def get_config(self):
        return {**super().get_config(), "rounded_gate": self.rounded_gate}


TF_KERAS = LayerKit(tf_keras.layers, tf_keras.Model, tf_keras.layers.BatchNormalization, _hard_sigmoid, _activation)
# What tf_keras needs to rebuild a twin from its config (TFMOT clones the model that way).
CUSTOM_OBJECTS = {"shifted_relu6": shifted_relu6, "hard_swish": hard_swish, "Swish": Swish}


def build_twin(arch: Arch, name: str = "cream") -> tf_keras.Model:
    """The network `arch` describes as a tf_keras functional model, freshly initialized."""
    return build_child(arch, name=name, kit=TF_KERAS)


def _weighted(model) -> dict:
    return {layer.name: layer for layer in model.layers if layer.weights}


def copy_weights(source, target) -> None:
    """Copies every layer's weights from `source` to the layer of the same name in `target`
    (Keras 3 to tf_keras or back). Raises ValueError when the two do not hold the same layers."""
    ours, theirs = _weighted(source), _weighted(target)
    if ours.keys() != theirs.keys():
        missing, extra = sorted(ours.keys() - theirs.keys()), sorted(theirs.keys() - ours.keys())
        raise ValueError(
            f"{source.name!r} and {target.name!r} are not the same network: layers only in the first "
            f"{missing[:5]}, only in the second {extra[:5]}; valid is a twin built from the same architecture."
        )
    for name, layer in ours.items():
        theirs[name].set_weights(layer.get_weights())


def twin_of(model, arch: Arch, images: np.ndarray, tolerance: float = 1e-5) -> tf_keras.Model:
    """The tf_keras twin of Keras 3 `model` (built for `arch`) carrying its weights, checked to
    give its outputs on `images` within `tolerance` (RuntimeError otherwise)."""
    twin = build_twin(arch, name=model.name)
    copy_weights(model, twin)
    difference = max_difference(model, twin, images)
    if not difference <= tolerance:
        raise RuntimeError(
            f"The tf_keras twin of {model.name!r} differs from it by {difference:.3g} on the same images "
            f"(allowed {tolerance:g}); the two builders no longer make the same network."
        )
    return twin


def max_difference(model, twin, images: np.ndarray) -> float:
    """Largest absolute difference of the two models' inference outputs on `images`."""
    images = np.asarray(images, np.float32)
    ours = np.asarray(model(images, training=False))
    theirs = twin(images, training=False).numpy()
    return float(np.abs(ours - theirs).max())
