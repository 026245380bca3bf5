"""Cream networks with keras.applications' conventions, and their multi-scale feature maps.

`CreamNet` builds any zoo model, architecture string or `Arch` the way `keras.applications`
builds its models: with or without the classifier (`include_top`), pooled or not (`pooling`),
at a fixed input size or at any (`input_shape` with None sides), with fresh weights or weights
from a zoo entry, a `.keras` file or an official checkpoint. Weights trained with the classifier
load into a model without it (layers are matched by name).

`features` builds the network as a feature extractor: one map per stride the choice stages reach,
keyed by level (log2 of the stride, Model Garden's endpoint names), plus the last 320-channel map:

    >>> model = features("cream_14", input_shape=(None, None, 3))
    >>> {key: tuple(output.shape) for key, output in model.output.items()}  # doctest: +NORMALIZE_WHITESPACE
    {'2': (None, None, None, 24), '3': (None, None, None, 40), '4': (None, None, None, 96),
     '5': (None, None, None, 192), 'last': (None, None, None, 320)}

At the paper's stem stride of 2 the levels are 2..5 (strides 4, 8, 16, 32): stage 1's output,
stage 2's, stage 4's (stage 3 shares its stride) and stage 5's. A network with stem stride 1
(the 28x28 configs) has levels 1..4. `preprocess_input` prepares 8-bit RGB images for the
ImageNet models; an entry's own normalization is in its metadata.json (`preprocessing`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from cream_tf import zoo
from cream_tf.arch import HEAD_CHANNELS, LAST_CHANNELS, STAGES, Arch
from cream_tf.blocks import KERAS, LayerKit, apply_head, head_layers
from cream_tf.childnet import apply_trunk
from cream_tf.data.pipeline import IMAGENET_MEAN, IMAGENET_STD

POOLINGS = (None, "avg", "max")


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A feature map `features` returns: the output of block `block` (a `BlockSpec.name`)."""

    level: int
    stride: int
    channels: int
    block: str


def endpoints(arch: Arch) -> dict[str, Endpoint]:
    """Level -> the last choice stage's output at that stride. The choices do not change these:
    a stage's width and stride are the space's."""
    found, stride = {}, arch.stem_stride
    for index, (stage, depth) in enumerate(zip(STAGES, arch.depths), start=1):
        stride *= stage.stride
        level = stride.bit_length() - 1
        found[str(level)] = Endpoint(level, stride, stage.channels, f"blocks_{index}_{depth - 1}")
    return found


def resolve(model) -> Arch:
    """A zoo name, an architecture string or an Arch, as an Arch."""
    if isinstance(model, Arch):
        return model
    valid = f"valid are a zoo name ({', '.join(zoo.names())}), an architecture string or a cream_tf.arch.Arch"
    if not isinstance(model, str):
        raise ValueError(f"model={model!r} is not valid; {valid}.")
    if model in zoo.names():
        return zoo.arch_of(model)
    try:
        return Arch.parse(model)
    except ValueError as error:
        raise ValueError(
            f"model={model!r} is neither a zoo name nor an architecture string ({error}); {valid}."
        ) from None


def _input_shape(arch: Arch, input_shape, include_top: bool) -> tuple:
    if input_shape is None:
        return (arch.input_size, arch.input_size, arch.in_channels)
    shape = tuple(input_shape)
    if len(shape) != 3 or any(side is not None and (not isinstance(side, int) or side < 1) for side in shape[:2]):
        raise ValueError(
            f"input_shape={input_shape!r} is not valid; valid is (height, width, channels), "
            "each side a positive int or None."
        )
    if include_top and None in shape[:2]:
        raise ValueError(
            f"input_shape={input_shape!r} has a None side with include_top=True; a classifier is "
            "trained, measured and exported at one size. Valid: give both sides, or include_top=False "
            "(with pooling='avg' for a vector at any size)."
        )
    for side in shape[:2]:
        if side is not None and side < arch.total_stride:
            raise ValueError(
                f"input_shape={input_shape!r}: a side of {side} is below the network's total stride "
                f"{arch.total_stride}; valid sides are at least {arch.total_stride}, or None."
            )
    return shape


def CreamNet(  # keras.applications names its builders in CamelCase
    model="cream_14",
    include_top: bool = True,
    weights=None,
    input_shape: Sequence | None = None,
    pooling: str | None = None,
    classes: int | None = None,
    classifier_activation: str | None = "softmax",
    name: str | None = None,
    kit: LayerKit = KERAS,
):
    """A Cream network as keras.applications builds its models (a functional model of built-in layers).

    Args:
      model: a zoo name (`cream_tf.zoo.names()`), an architecture string or an `Arch`.
      include_top: with the head (global pool, 1x1 conv to 1280, classifier); without it the
        output is the 320-channel map (or its pooling).
      weights: None (fresh), a zoo entry folder or `.keras` file, or an official PyTorch checkpoint
        (`.pth.tar`, `.pth`, `.pt`) of the same architecture; with or without their classifier.
      input_shape: (height, width, channels), a side may be None when include_top is False;
        default the architecture's input size and channels.
      pooling: without the top, None (the map), 'avg' or 'max' (a vector of 320).
      classes: the classifier's width; default the architecture's (1000 for the zoo).
      classifier_activation: applied to the classifier's output (a layer named 'predictions');
        None returns logits, as cream_tf's own models do.
      kit: whose layers (cream_tf.blocks.LayerKit): Keras 3's, or tf_keras' (cream_tf.twin.TF_KERAS).
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r} is not valid; valid are None, 'avg' and 'max'.")
    arch, inputs, x, _ = _trunk(resolve(model), weights, input_shape, include_top, kit, classes)
    L = kit.layers
    if include_top:
        head = head_layers(arch.num_classes, HEAD_CHANNELS, arch.dropout, kit, arch.ops.fixed_activation)
        x = apply_head(head, x, kit=kit)
        if classifier_activation is not None:
            x = L.Activation(classifier_activation, name="predictions")(x)
    elif pooling:
        x = (L.GlobalAveragePooling2D if pooling == "avg" else L.GlobalMaxPooling2D)(name=f"{pooling}_pool")(x)
    default = model if isinstance(model, str) and model in zoo.names() else "cream"
    return _network(kit, inputs, x, name or default, weights, arch)


def features(
    model="cream_14",
    weights=None,
    input_shape: Sequence | None = None,
    min_level: int | None = None,
    max_level: int | None = None,
    name: str | None = None,
    kit: LayerKit = KERAS,
):
    """The network as a feature extractor: a dict of maps, the levels from `min_level` to
    `max_level` (default all, see `endpoints`) and 'last' (the 320-channel map). Arguments as
    `CreamNet`'s; a level the network does not have is an error naming the levels it has."""
    arch = resolve(model)
    available = endpoints(arch)
    levels = sorted(int(key) for key in available)
    low, high = min_level or levels[0], max_level or levels[-1]
    if low > high or low not in levels or high not in levels:
        raise ValueError(
            f"Levels {low}..{high} asked of {arch.path} (stem stride {arch.stem_stride}), which has levels "
            f"{levels[0]}..{levels[-1]} (strides {available[str(levels[0])].stride}.."
            f"{available[str(levels[-1])].stride}); valid are min_level <= max_level inside those."
        )
    arch, inputs, last, blocks = _trunk(arch, weights, input_shape, False, kit)
    outputs = {str(level): blocks[available[str(level)].block] for level in range(low, high + 1)}
    return _network(kit, inputs, {**outputs, "last": last}, name or "cream_features", weights, arch)


def _trunk(arch: Arch, weights, input_shape, include_top: bool, kit: LayerKit, classes: int | None = None):
    """Checks the weights path and input shape (before any work), then applies every block to a
    new input: (the Arch built, the input, the last map, each block's output by name)."""
    if weights is not None:
        zoo.weights_file(weights, checkpoints=True)
    shape = _input_shape(arch, input_shape, include_top)
    arch = arch.replace(in_channels=shape[2], num_classes=classes or arch.num_classes)
    inputs = kit.layers.Input(shape, name="image")
    return (arch, inputs, *apply_trunk(arch, inputs, kit))


def _network(kit: LayerKit, inputs, outputs, name: str, weights, arch: Arch):
    """The functional model, carrying `weights` (layer by name) when given."""
    network = kit.model(inputs, outputs, name=name)
    if weights is not None:
        zoo.load_weights_from(network, weights, arch)
    return network


def preprocess_input(images, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """8-bit images (0..255, RGB, NHWC) as the zoo's ImageNet models take them: x / 255, then
    (x - mean) / std per channel. A zoo entry's own values are in its metadata.json."""
    images = np.asarray(images, np.float32) / 255.0
    return (images - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


__all__ = ["CreamNet", "Endpoint", "LAST_CHANNELS", "endpoints", "features", "preprocess_input"]
