"""The blocks of the Cream space as Keras layers made of built-in Keras layers.

Each block is a `keras.layers.Layer` so that a subclassed supernet tracks its weights, and
its `call` only applies built-in layers (Conv2D, DepthwiseConv2D, BatchNormalization, ...).
The child-net builder calls `block.call` on symbolic tensors, so an exported child net is a
functional model of built-in layers that loads without this package, with the same layers
(and layer names) that the supernet trains: inherited weights map one to one.

Numerics follow PyTorch/timm: BatchNorm epsilon 1e-5 and momentum 0.1 (Keras 0.9),
symmetric k//2 padding on strided convolutions (TensorFlow's 'same' pads asymmetrically),
hard_sigmoid = relu6(x + 3) / 6 (Keras 3's definition) for the SE gate, swish elsewhere.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

from cream_tf.arch import BlockSpec

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9  # PyTorch momentum 0.1
_KERNEL = {layers.Conv2D: "kernel_initializer", layers.DepthwiseConv2D: "depthwise_initializer"}


def conv_initializer():
    """Keras' glorot uniform, kept on measurement: the official init (timm's `_init_weight_goog`,
    He normal over fan-out) trained the default search's supernet slower, 30.9% against 43.4%
    mean training top-1 over steps 150-200 (benchmarks/search_dynamics.py init, RESULTS.md)."""
    return "glorot_uniform"


def dense_initializer():
    """Keras' glorot uniform; see `conv_initializer`."""
    return "glorot_uniform"


def _padded(conv_cls, spec_kernel: int, stride: int, name: str, **kwargs):
    """A convolution padded as PyTorch pads: k//2 on every side."""
    kwargs[_KERNEL[conv_cls]] = conv_initializer()
    if stride == 1:
        return [conv_cls(kernel_size=spec_kernel, strides=1, padding="same", name=name, **kwargs)]
    pad = layers.ZeroPadding2D(spec_kernel // 2, name=f"{name}_pad")
    return [pad, conv_cls(kernel_size=spec_kernel, strides=stride, padding="valid", name=name, **kwargs)]


def _conv(filters, kernel, stride, name, use_bias=False):
    return _padded(layers.Conv2D, kernel, stride, name, filters=filters, use_bias=use_bias)


def _dwconv(kernel, stride, name):
    return _padded(layers.DepthwiseConv2D, kernel, stride, name, use_bias=False)


class FusedBatchNormalization(layers.BatchNormalization):
    """BatchNormalization whose training step is TensorFlow's single fused op.

    The supernet uses it: Keras' composite training path makes ~40 graph ops per layer, and
    tracing a supernet (six candidates at every position, each traced per replica) is
    dominated by op count. Same variables, same inference path as the built-in layer; the
    moving variance is updated with the unbiased batch variance, as PyTorch does.
    """

    def call(self, inputs, training=None, mask=None):
        if not training:
            return super().call(inputs, training=False)
        outputs, mean, variance, *_ = tf.compat.v1.nn.fused_batch_norm(
            inputs,
            self.gamma,
            self.beta,
            mean=self.moving_mean,
            variance=self.moving_variance,
            epsilon=self.epsilon,
            is_training=True,
            exponential_avg_factor=1.0 - self.momentum,
        )
        self.moving_mean.assign(mean)
        self.moving_variance.assign(variance)
        return outputs


def _bn(name, fused=False):
    cls = FusedBatchNormalization if fused else layers.BatchNormalization
    return cls(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)


def _apply(sequence, x, training):
    for layer in sequence:
        takes_training = isinstance(layer, (layers.BatchNormalization, layers.Dropout))
        x = layer(x, training=training) if takes_training else layer(x)
    return x


class Block(keras.layers.Layer):
    """A block decoded from a `BlockSpec`: a main path, an optional SE gate, an optional residual.

    Layer names follow the official module tree (`blocks_3_1_conv_dw` for `blocks.3.1.conv_dw`),
    which is what the checkpoint converter maps.
    """

    def __init__(self, spec: BlockSpec, drop_path: float = 0.0, fused_bn: bool = False, **kwargs):
        kwargs.setdefault("name", spec.name)
        super().__init__(**kwargs)
        self.spec = spec
        p = spec.name
        bn = lambda name: _bn(name, fused_bn)
        swish = lambda suffix: layers.Activation("swish", name=f"{p}_{suffix}")
        se, before_se, after_se = [], [], []
        if spec.kind in ("stem", "cn"):
            conv_name = "conv_stem" if spec.kind == "stem" else f"{p}_conv"
            bn_name = "bn1" if spec.kind == "stem" else f"{p}_bn1"
            before_se = [*_conv(spec.out_channels, spec.kernel, spec.stride, conv_name), bn(bn_name), swish("act")]
        elif spec.kind == "ds":
            before_se = [*_dwconv(spec.kernel, spec.stride, f"{p}_conv_dw"), bn(f"{p}_bn1"), swish("act1")]
            after_se = [*_conv(spec.out_channels, 1, 1, f"{p}_conv_pw"), bn(f"{p}_bn2")]
            se = self._se(spec.in_channels, spec.se_channels)
        elif spec.kind == "ir":
            before_se = [
                *_conv(spec.mid_channels, 1, 1, f"{p}_conv_pw"),
                bn(f"{p}_bn1"),
                swish("act1"),
                *_dwconv(spec.kernel, spec.stride, f"{p}_conv_dw"),
                bn(f"{p}_bn2"),
                swish("act2"),
            ]
            after_se = [*_conv(spec.out_channels, 1, 1, f"{p}_conv_pwl"), bn(f"{p}_bn3")]
            se = self._se(spec.mid_channels, spec.se_channels)
        else:
            raise ValueError(f"Unknown block kind {spec.kind!r}; valid are stem, ds, ir, cn.")
        self.before_se, self.se, self.after_se = before_se, se, after_se
        self.se_multiply = layers.Multiply(name=f"{p}_se_mul") if se else None
        self.drop_path = None
        self.add = None
        if spec.residual:
            if drop_path > 0:
                # Dropping whole samples of the residual branch is stochastic depth.
                self.drop_path = layers.Dropout(drop_path, noise_shape=(None, 1, 1, 1), name=f"{p}_drop_path")
            self.add = layers.Add(name=f"{p}_add")

    def _se(self, channels, reduced):
        p = self.spec.name
        return [
            layers.GlobalAveragePooling2D(keepdims=True, name=f"{p}_se_pool"),
            layers.Conv2D(reduced, 1, kernel_initializer=conv_initializer(), name=f"{p}_se_conv_reduce"),
            layers.ReLU(name=f"{p}_se_relu"),
            layers.Conv2D(channels, 1, kernel_initializer=conv_initializer(), name=f"{p}_se_conv_expand"),
            layers.Activation("hard_sigmoid", name=f"{p}_se_gate"),
        ]

    @property
    def parts(self) -> list[layers.Layer]:
        """The built-in layers this block applies, by which weights map between networks."""
        extra = [self.se_multiply, self.drop_path, self.add]
        return self.before_se + self.se + self.after_se + [layer for layer in extra if layer]

    def call(self, inputs, training=None):
        x = _apply(self.before_se, inputs, training)
        if self.se:
            x = self.se_multiply([x, _apply(self.se, x, training)])
        x = _apply(self.after_se, x, training)
        if self.add is not None:
            if self.drop_path is not None:
                x = self.drop_path(x, training=training)
            x = self.add([inputs, x])
        return x


class Head(keras.layers.Layer):
    """MobileNetV3 head: global pool BEFORE a 1x1 conv with bias, swish, dropout, classifier."""

    def __init__(self, num_classes: int, head_channels: int, dropout: float, **kwargs):
        super().__init__(name="head", **kwargs)
        self.sequence = [
            layers.GlobalAveragePooling2D(keepdims=True, name="global_pool"),
            layers.Conv2D(head_channels, 1, use_bias=True, kernel_initializer=conv_initializer(), name="conv_head"),
            layers.Activation("swish", name="act2"),
            layers.Flatten(name="flatten"),
        ]
        if dropout > 0:
            self.sequence.append(layers.Dropout(dropout, name="dropout"))
        self.sequence.append(layers.Dense(num_classes, kernel_initializer=dense_initializer(), name="classifier"))

    @property
    def parts(self) -> list[layers.Layer]:
        return list(self.sequence)

    def call(self, inputs, training=None):
        return _apply(self.sequence, inputs, training)
