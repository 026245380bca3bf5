"""The blocks of the Cream space as Keras layers made of built-in Keras layers.

Each block is a `keras.layers.Layer` so that a subclassed supernet tracks its weights, and
its `call` only applies built-in layers (Conv2D, DepthwiseConv2D, BatchNormalization, ...).
The child-net builder calls `block.call` on symbolic tensors, so an exported child net is a
functional model of built-in layers that loads without this package, with the same layers
(and layer names) that the supernet trains: inherited weights map one to one.

Numerics follow PyTorch/timm: BatchNorm epsilon 1e-5 and momentum 0.1 (Keras 0.9),
symmetric k//2 padding on strided convolutions (TensorFlow's 'same' pads asymmetrically),
hard_sigmoid = relu6(x + 3) / 6 (Keras 3's definition) for the SE gate, each block's own
activation elsewhere (swish in the paper's space; cream_tf.candidates).

The layers of a block come from one recipe (`block_layers`, `head_layers`) over a `LayerKit`:
Keras 3's layers here, tf_keras' for the quantization-aware twin (cream_tf.twin), so both
networks are the same layers under the same names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import keras
import tensorflow as tf
from keras import layers

from cream_tf.arch import BlockSpec

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9  # PyTorch momentum 0.1


def conv_initializer():
    """Keras' glorot uniform, kept on measurement: the official init (timm's `_init_weight_goog`,
    He normal over fan-out) trained the default search's supernet slower (benchmarks/
    search_dynamics.py init; figures in RESULTS.md)."""
    return "glorot_uniform"


def dense_initializer():
    """Keras' glorot uniform; see `conv_initializer`."""
    return "glorot_uniform"


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


@dataclasses.dataclass(frozen=True)
class LayerKit:
    """Where the recipe's layers come from.

    layers: a module of Keras' built-in layers (`keras.layers`, or `tf_keras.layers`).
    model: the functional model class of the same Keras (`keras.Model`, `tf_keras.Model`).
    batch_norm: the BatchNormalization class (the supernet trains with `FusedBatchNormalization`).
    hard_sigmoid: name -> the layers computing relu6(x + 3) / 6, the last one named `name`
      (tf_keras' own 'hard_sigmoid' is another function).
    activation: (kind, name) -> the layer computing activation `kind` (cream_tf.candidates.ACTIVATIONS:
      swish x * sigmoid(x), relu, relu6, hard_swish x * relu6(x + 3) / 6).
    """

    layers: Any
    model: type
    batch_norm: type
    hard_sigmoid: Callable[[str], list]
    activation: Callable[[str, str], Any]

    @property
    def takes_training(self) -> tuple[type, ...]:
        """The layers whose call differs between training and inference."""
        return (self.layers.BatchNormalization, self.layers.Dropout)


KERAS = LayerKit(
    layers,
    keras.Model,
    layers.BatchNormalization,
    hard_sigmoid=lambda name: [layers.Activation("hard_sigmoid", name=name)],
    activation=lambda kind, name: layers.Activation(kind, name=name),
)
KERAS_FUSED = dataclasses.replace(KERAS, batch_norm=FusedBatchNormalization)


def _padded(kit: LayerKit, depthwise: bool, kernel: int, stride: int, name: str, dilation: int = 1, **kwargs) -> list:
    """A convolution padded as PyTorch pads: dilation * (k//2) on every side. A dilated one runs
    at stride 1 whatever `stride` says (TensorFlow's convolutions cannot stride and dilate at
    once): the caller subsamples after it (`_subsample`)."""
    conv_cls = kit.layers.DepthwiseConv2D if depthwise else kit.layers.Conv2D
    kwargs["depthwise_initializer" if depthwise else "kernel_initializer"] = conv_initializer()
    if dilation > 1:
        return [conv_cls(kernel_size=kernel, strides=1, dilation_rate=dilation, padding="same", name=name, **kwargs)]
    if stride == 1:
        return [conv_cls(kernel_size=kernel, strides=1, padding="same", name=name, **kwargs)]
    pad = kit.layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")
    return [pad, conv_cls(kernel_size=kernel, strides=stride, padding="valid", name=name, **kwargs)]


def _subsample(kit: LayerKit, spec: BlockSpec, name: str) -> list:
    """For a dilated depthwise convolution at stride 2 (run at stride 1): every second row and
    column, as a 1x1 max pool of stride 2. Placed after its BatchNorm and activation, which act
    per pixel, so that the result is PyTorch's strided dilated convolution's (in inference; in
    training BatchNorm's batch statistics cover all the stride-1 pixels) and TFMOT and the TFLite
    converter still see the convolution followed by its BatchNorm, the pattern they fold."""
    return [kit.layers.MaxPooling2D(1, strides=spec.stride, name=name)] if spec.subsampled else []


class BlockLayers(NamedTuple):
    """The built-in layers of one block, in the order they are applied (see `apply_block`):
    the main path (`before_se`, the SE gate, `after_se`), then, when `add` is set, the sum with
    the input (through `shortcut` when that is a projection) and `after_add`."""

    before_se: list
    se: list
    after_se: list
    se_multiply: Any
    drop_path: Any
    add: Any
    shortcut: list = []
    after_add: list = []


def block_layers(spec: BlockSpec, kit: LayerKit = KERAS, drop_path: float = 0.0) -> BlockLayers:
    """The layers of the block `spec` describes, made from `kit`: a main path, an optional SE
    gate, an optional residual. Layer names follow the official module tree
    (`blocks_3_1_conv_dw` for `blocks.3.1.conv_dw`), which is what the checkpoint converter maps."""
    p, L = spec.name, kit.layers
    conv = lambda filters, kernel, stride, name, bias=False: _padded(
        kit, False, kernel, stride, name, filters=filters, use_bias=bias
    )
    dwconv = lambda kernel, stride, name: _padded(kit, True, kernel, stride, name, spec.dilation, use_bias=False)
    bn = lambda name: kit.batch_norm(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)
    act = lambda suffix: kit.activation(spec.activation, f"{p}_{suffix}")

    def squeeze_excite(channels, reduced):
        return [
            L.GlobalAveragePooling2D(keepdims=True, name=f"{p}_se_pool"),
            # The ReLU inside the conv, as TFLite fuses it: TFMOT's QAT then quantizes this kernel
            # (a Conv2D followed by a ReLU layer gets no quantization at all there).
            L.Conv2D(reduced, 1, activation="relu", kernel_initializer=conv_initializer(), name=f"{p}_se_conv_reduce"),
            L.Conv2D(channels, 1, kernel_initializer=conv_initializer(), name=f"{p}_se_conv_expand"),
            *kit.hard_sigmoid(f"{p}_se_gate"),
        ]

    se, before_se, after_se, shortcut, after_add = [], [], [], [], []
    if spec.kind in ("stem", "cn"):
        conv_name = "conv_stem" if spec.kind == "stem" else f"{p}_conv"
        bn_name = "bn1" if spec.kind == "stem" else f"{p}_bn1"
        before_se = [*conv(spec.out_channels, spec.kernel, spec.stride, conv_name), bn(bn_name), act("act")]
    elif spec.kind == "ds":
        before_se = [*dwconv(spec.kernel, spec.stride, f"{p}_conv_dw"), bn(f"{p}_bn1"), act("act1")]
        after_se = [*conv(spec.out_channels, 1, 1, f"{p}_conv_pw"), bn(f"{p}_bn2")]
        se = squeeze_excite(spec.in_channels, spec.se_channels) if spec.se_channels else []
    elif spec.kind == "ir":
        before_se = [
            *conv(spec.mid_channels, 1, 1, f"{p}_conv_pw"),
            bn(f"{p}_bn1"),
            act("act1"),
            *dwconv(spec.kernel, spec.stride, f"{p}_conv_dw"),
            bn(f"{p}_bn2"),
            act("act2"),
            *_subsample(kit, spec, f"{p}_conv_dw_subsample"),
        ]
        after_se = [*conv(spec.out_channels, 1, 1, f"{p}_conv_pwl"), bn(f"{p}_bn3")]
        se = squeeze_excite(spec.mid_channels, spec.se_channels) if spec.se_channels else []
    elif spec.kind == "bottleneck":  # microsoft/Cream lib/models/blocks/residual_block.py, `Bottleneck`
        before_se = [
            *conv(spec.mid_channels, 1, 1, f"{p}_conv1", bias=True),
            bn(f"{p}_bn1"),
            act("act1"),
            *conv(spec.mid_channels, spec.kernel, spec.stride, f"{p}_conv2", bias=True),
            bn(f"{p}_bn2"),
            act("act2"),
            *conv(spec.out_channels, 1, 1, f"{p}_conv3", bias=True),
            bn(f"{p}_bn3"),
        ]
        if not spec.residual:
            shortcut = [
                *conv(spec.out_channels, 1, spec.stride, f"{p}_downsample_0", bias=True),
                bn(f"{p}_downsample_1"),
            ]
        after_add = [act("act3")]
    elif spec.kind != "skip":
        raise ValueError(f"Unknown block kind {spec.kind!r}; valid are stem, ds, ir, bottleneck, skip, cn.")
    se_multiply = L.Multiply(name=f"{p}_se_mul") if se else None
    dropout = add = None
    if spec.residual or shortcut:
        if drop_path > 0 and spec.residual:
            # Dropping whole samples of the residual branch is stochastic depth.
            dropout = L.Dropout(drop_path, noise_shape=(None, 1, 1, 1), name=f"{p}_drop_path")
        add = L.Add(name=f"{p}_add")
    return BlockLayers(before_se, se, after_se, se_multiply, dropout, add, shortcut, after_add)


def _apply(sequence, x, training, kit: LayerKit):
    for layer in sequence:
        x = layer(x, training=training) if isinstance(layer, kit.takes_training) else layer(x)
    return x


def apply_block(parts, inputs, training=None, kit: LayerKit = KERAS):
    """Applies a block's layers (a `BlockLayers`, or anything with its attributes) to `inputs`."""
    x = _apply(parts.before_se, inputs, training, kit)
    if parts.se:
        x = parts.se_multiply([x, _apply(parts.se, x, training, kit)])
    x = _apply(parts.after_se, x, training, kit)
    if parts.add is not None:
        if parts.drop_path is not None:
            x = parts.drop_path(x, training=training)
        x = parts.add([_apply(parts.shortcut, inputs, training, kit), x])
    return _apply(parts.after_add, x, training, kit)


class Block(keras.layers.Layer):
    """A block decoded from a `BlockSpec` (see `block_layers`), as one Keras 3 layer."""

    def __init__(self, spec: BlockSpec, drop_path: float = 0.0, fused_bn: bool = False, **kwargs):
        kwargs.setdefault("name", spec.name)
        super().__init__(**kwargs)
        self.spec = spec
        # Attributes in the order block_layers gives them: Keras tracks the layers, and so orders
        # the block's weights, in the order they are set, the same in every network built of it.
        for field, value in block_layers(spec, KERAS_FUSED if fused_bn else KERAS, drop_path)._asdict().items():
            setattr(self, field, value)

    @property
    def parts(self) -> list[layers.Layer]:
        """The built-in layers this block applies, by which weights map between networks."""
        extra = [self.se_multiply, self.drop_path, self.add]
        return (
            self.before_se
            + self.se
            + self.after_se
            + [layer for layer in extra if layer]
            + self.shortcut
            + self.after_add
        )

    def call(self, inputs, training=None):
        return apply_block(self, inputs, training)


def head_layers(
    num_classes: int, head_channels: int, dropout: float, kit: LayerKit = KERAS, activation: str = "swish"
) -> list:
    """MobileNetV3 head: global pool BEFORE a 1x1 conv with bias, activation, dropout, classifier."""
    L = kit.layers
    sequence = [
        L.GlobalAveragePooling2D(keepdims=True, name="global_pool"),
        L.Conv2D(head_channels, 1, use_bias=True, kernel_initializer=conv_initializer(), name="conv_head"),
        kit.activation(activation, "act2"),
        L.Flatten(name="flatten"),
    ]
    if dropout > 0:
        sequence.append(L.Dropout(dropout, name="dropout"))
    sequence.append(L.Dense(num_classes, kernel_initializer=dense_initializer(), name="classifier"))
    return sequence


def apply_head(sequence, inputs, training=None, kit: LayerKit = KERAS):
    return _apply(sequence, inputs, training, kit)


class Head(keras.layers.Layer):
    """The head (see `head_layers`) as one Keras 3 layer."""

    def __init__(self, num_classes: int, head_channels: int, dropout: float, activation: str = "swish", **kwargs):
        super().__init__(name="head", **kwargs)
        self.sequence = head_layers(num_classes, head_channels, dropout, activation=activation)

    @property
    def parts(self) -> list[layers.Layer]:
        return list(self.sequence)

    def call(self, inputs, training=None):
        return apply_head(self.sequence, inputs, training)
