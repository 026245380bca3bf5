"""The tf_keras twin of a child net: the same network, layer for layer and name for name, built of
tf_keras layers, because tensorflow-model-optimization's quantization-aware training works on
tf_keras models only.

Both come from the one builder (`cream_tf.childnet.build_child` over a `LayerKit`). The one
difference is how the SE gate's hard sigmoid is written: tf_keras' 'hard_sigmoid' activation is
another function (0.2 x + 0.5, clipped), so the twin's gate is an `Activation` of
`relu6_hard_sigmoid`, the function Keras 3 computes. Weights move between the two by layer name.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras

from cream_tf.arch import Arch
from cream_tf.blocks import LayerKit
from cream_tf.childnet import build_child


def relu6_hard_sigmoid(x):
    """relu6(x + 3) / 6: Keras 3's (and PyTorch's) hard sigmoid."""
    return tf.nn.relu6(x + 3.0) / 6.0


TF_KERAS = LayerKit(
    tf_keras.layers,
    tf_keras.Model,
    tf_keras.layers.BatchNormalization,
    lambda name: [tf_keras.layers.Activation(relu6_hard_sigmoid, name=name)],
)
# What tf_keras needs to rebuild a twin from its config (TFMOT clones the model that way).
CUSTOM_OBJECTS = {"relu6_hard_sigmoid": relu6_hard_sigmoid}


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
