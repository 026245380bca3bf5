"""FLOPs and parameter counts, checked against an independent PyTorch (timm) build and the Keras model."""

import numpy as np
import pytest
from keras import layers

from cream_tf import zoo
from cream_tf.arch import Arch
from cream_tf.childnet import build_child
from cream_tf.flops import choice_block_macs, cost_of, depths_for_flops_range
from torch_reference import macs_and_params, timm_cream


@pytest.mark.parametrize("name", zoo.names())
def test_counts_match_timm_build(name):
    arch = zoo.arch_of(name)
    torch_macs, torch_params = macs_and_params(timm_cream(arch.choices), arch.input_size)
    cost = cost_of(arch)
    assert cost.params == pytest.approx(torch_params, rel=1e-3)
    assert cost.macs == pytest.approx(torch_macs, rel=1e-2)


@pytest.mark.parametrize("name, mmacs, mparams", [
    ("cream_14", 14.5, 2.687), ("cream_43", 43.3, 4.404), ("cream_114", 117.1, 4.416),
    ("cream_287", 290.8, 6.050), ("cream_481", 460.4, 7.713), ("cream_604", 578.7, 9.696)])
def test_counts_match_reference_figures(name, mmacs, mparams):
    cost = cost_of(zoo.arch_of(name))
    assert round(cost.macs / 1e6, 1) == mmacs
    assert round(cost.params / 1e6, 3) == mparams


def _keras_macs(model):
    """Multiply-adds read off the built Keras layers, independently of the counter."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.DepthwiseConv2D):
            h, w, c = layer.output.shape[1:]
            total += h * w * c * int(np.prod(layer.kernel_size))
        elif isinstance(layer, layers.Conv2D):
            h, w, c = layer.output.shape[1:]
            total += h * w * c * int(np.prod(layer.kernel.shape[:3]))
        elif isinstance(layer, layers.Dense):
            total += int(np.prod(layer.kernel.shape))
    return total


@pytest.mark.parametrize("text", [
    "[3][3,3][3,3][3][3]@64",
    "[0][5,4][1,2,3][4,4,4,4,4,4][2]@28;in=1;classes=10;stem=8/1",
])
def test_counts_match_the_built_keras_model(text):
    arch = Arch.parse(text)
    model = build_child(arch)
    cost = cost_of(arch)
    assert cost.params == sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert cost.macs == _keras_macs(model)


def test_grayscale_small_input_matches_timm():
    arch = Arch.parse("[0][5,4][1,2,3][4,4][2]@28;in=1;classes=10;stem=16/1")
    reference = timm_cream(arch.choices, num_classes=10, in_chans=1)
    reference.conv_stem.stride = (1, 1)
    torch_macs, torch_params = macs_and_params(reference, 28, in_chans=1)
    assert cost_of(arch).params == torch_params
    assert cost_of(arch).macs == torch_macs


def test_table_lists_every_layer_and_the_totals():
    arch = zoo.arch_of("cream_14")
    table = cost_of(arch).table()
    assert "blocks.1.0.se.conv_reduce" in table and "classifier" in table
    assert "14.5M multiply-adds, 2.687M parameters" in table


def test_depths_for_default_range_are_the_official_ones():
    assert depths_for_flops_range(0, 600) == (4, 4, 5, 4, 4)


def test_depths_grow_in_official_order_and_respect_the_range():
    assert depths_for_flops_range(0, 100) == (1, 1, 1, 1, 1)
    small = depths_for_flops_range(0, 300)
    assert all(1 <= d for d in small) and small != (4, 4, 5, 4, 4)
    # The first stage to grow is the c80 stage, then c96, c192, c40, c24.
    assert depths_for_flops_range(0, 220)[2] >= depths_for_flops_range(0, 220)[0]


def _largest_mflops(depths):
    return choice_block_macs(Arch(tuple((5,) * d for d in depths))) / 1e6


def test_range_below_minimum_grows_until_it_is_reached():
    assert _largest_mflops(depths_for_flops_range(0, 300)) <= 300
    # A minimum above what fits the maximum forces growth past it, as in the official code.
    depths = depths_for_flops_range(300, 300)
    assert _largest_mflops(depths) >= 300
    assert _largest_mflops(depths_for_flops_range(500, 2000)) >= 500


@pytest.mark.parametrize("low, high", [(0, 5), (5000, 9000)])
def test_unreachable_range_names_the_reachable_one(low, high):
    with pytest.raises(ValueError, match=r"can cost from \d+\.\d to \d+\.\d MFLOPs"):
        depths_for_flops_range(low, high)


def test_inverted_range_is_rejected():
    with pytest.raises(ValueError, match=r"\[600, 100\]"):
        depths_for_flops_range(600, 100)
