"""Builds a child network of the Cream space as a functional Keras model of built-in layers.

Example:

    >>> from cream_tf.arch import Arch
    >>> model = build_child(Arch.parse("[3][3,3][3,3][3][3]@64"))
    >>> model.output_shape
    (None, 1000)

The model takes images already normalized (see the zoo entry's metadata for the mean and
standard deviation) in NHWC layout and returns logits. Its `.keras` file loads with
`keras.models.load_model` in a process that never imports cream_tf.
"""

from __future__ import annotations

from cream_tf.arch import HEAD_CHANNELS, Arch, block_specs
from cream_tf.blocks import KERAS, KERAS_FUSED, LayerKit, apply_block, apply_head, block_layers, head_layers


def drop_path_rates(arch: Arch) -> list[float]:
    """Stochastic-depth rate per block after the stem: linear from 0 to arch.drop_path (timm's rule)."""
    count = len(block_specs(arch)) - 1
    return [arch.drop_path * i / count for i in range(count)]


def build_child(arch: Arch, name: str = "cream", fused_bn: bool = False, kit: LayerKit | None = None):
    """The network `arch` describes, with freshly initialized weights.

    fused_bn: BatchNorm as TensorFlow's fused op, which trains about a quarter faster on a CPU
      (the same variables, so weights copy one to one). Its layer class is ours, so models that
      are saved or exported keep the default, Keras' own BatchNormalization.
    kit: whose layers (cream_tf.blocks.LayerKit); default Keras 3's. cream_tf.twin builds the
      same network of tf_keras layers with it, for quantization-aware training.
    """
    kit = kit or (KERAS_FUSED if fused_bn else KERAS)
    inputs = kit.layers.Input((arch.input_size, arch.input_size, arch.in_channels), name="image")
    x, _ = apply_trunk(arch, inputs, kit)
    outputs = apply_head(
        head_layers(arch.num_classes, HEAD_CHANNELS, arch.dropout, kit, arch.ops.fixed_activation), x, kit=kit
    )
    return kit.model(inputs, outputs, name=name)


def apply_trunk(arch: Arch, inputs, kit: LayerKit = KERAS):
    """Every block of `arch` from the stem to the 320-channel conv, applied to `inputs` (symbolic,
    of any spatial size: the padding does not depend on it). Returns the last map and each block's
    output by block name (`BlockSpec.name`)."""
    specs, x, outputs = block_specs(arch), inputs, {}
    for spec, rate in zip(specs, [0.0, *drop_path_rates(arch)]):
        x = outputs[spec.name] = apply_block(block_layers(spec, kit, drop_path=rate), x, kit=kit)
    return x, outputs
