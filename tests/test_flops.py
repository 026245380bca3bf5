"""FLOPs and parameter counts, checked against an independent PyTorch (timm) build and the Keras model."""

import numpy as np
import pytest
from keras import layers
from torch_reference import macs_and_params, timm_cream

from cream_tf import zoo
from cream_tf.arch import Arch
from cream_tf.childnet import build_child
from cream_tf.flops import choice_block_macs, cost_of, depths_for_flops_range


@pytest.mark.parametrize("name", zoo.names())
def test_counts_match_timm_build(name):
    arch = zoo.arch_of(name)
    torch_macs, torch_params = macs_and_params(timm_cream(arch.choices), arch.input_size)
    cost = cost_of(arch)
    assert cost.params == pytest.approx(torch_params, rel=1e-3)
    assert cost.macs == pytest.approx(torch_macs, rel=1e-2)


@pytest.mark.parametrize(
    "name, mmacs, mparams",
    [
        ("cream_14", 14.5, 2.687),
        ("cream_43", 43.3, 4.404),
        ("cream_114", 117.1, 4.416),
        ("cream_287", 290.8, 6.050),
        ("cream_481", 460.4, 7.713),
        ("cream_604", 578.7, 9.696),
    ],
)
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


@pytest.mark.parametrize(
    "text",
    [
        "[3][3,3][3,3][3][3]@64",
        "[0][5,4][1,2,3][4,4,4,4,4,4][2]@28;in=1;classes=10;stem=8/1",
    ],
)
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


def _largest_mflops(depths):
    """Choice-block MFLOPs of the largest net of these depths (every block choice 5, k7 e6)."""
    return choice_block_macs(Arch(tuple((5,) * d for d in depths))) / 1e6


def _official_growth():
    """Every depth tuple the official rule passes through, smallest first, written out from the
    rule itself (shared/docs/cream-reference.md): one block per stage to start, then stages
    (0-based: c24 c40 c80 c96 c192) grow one entry at a time in the order 2,3,4,1,0,2,3,4,1,0 up
    to 3,3,3,2,2,4,4,4,4,4 entries; the c80 stage's fourth entry is `ir_r2` (two blocks)."""
    entries, sequence = [1] * 5, [(1, 1, 1, 1, 1)]
    for stage, limit in zip((2, 3, 4, 1, 0, 2, 3, 4, 1, 0), (3, 3, 3, 2, 2, 4, 4, 4, 4, 4)):
        while entries[stage] < limit:
            entries[stage] += 1
            sequence.append(tuple(n + (n == 4 and i == 2) for i, n in enumerate(entries)))
    return sequence


def test_official_growth_sequence_is_the_documented_one():
    sequence = _official_growth()
    assert len(sequence) == 16 and sequence[-1] == (4, 4, 5, 4, 4)
    assert sequence[:3] == [(1, 1, 1, 1, 1), (1, 1, 2, 1, 1), (1, 1, 3, 1, 1)]
    assert (2, 2, 3, 3, 3) in sequence and (2, 2, 5, 3, 3) in sequence and (2, 2, 4, 3, 3) not in sequence


def test_depths_grow_one_stage_at_a_time_in_the_official_order():
    sequence = _official_growth()
    costs = [_largest_mflops(depths) for depths in sequence]
    assert all(a < b for a, b in zip(costs, costs[1:]))  # each step costs more: the bounds below are sound
    # Any maximum between the cost of one step and the next stops the growth at that step.
    for depths, cost, next_cost in zip(sequence, costs, costs[1:] + [costs[-1] * 4]):
        for maximum in (cost, (cost + next_cost) / 2, next_cost * (1 - 1e-9)):
            assert depths_for_flops_range(0, maximum) == depths, (maximum, cost, next_cost)
    # Read back from the function alone: the stages grow first in the order c80, c96, c192, c40, c24.
    returned = [depths_for_flops_range(0, (a + b) / 2) for a, b in zip(costs, costs[1:])]
    first_growth = []
    for before, after in zip(returned, returned[1:]):
        grown = [i for i, (b, a) in enumerate(zip(before, after)) if a != b]
        assert len(grown) == 1 and after[grown[0]] > before[grown[0]], (before, after)
        if grown[0] not in first_growth:
            first_growth.append(grown[0])
    assert first_growth == [2, 3, 4, 1, 0]


def test_depths_for_a_range_fit_the_maximum_and_the_next_step_would_not():
    sequence = _official_growth()
    # Below the one-block net's largest cost (114.9) the one-block net is still the answer:
    # its smaller choices fit.
    assert depths_for_flops_range(0, 100) == sequence[0]
    for maximum in (220, 300, 450):
        depths = depths_for_flops_range(0, maximum)
        step = sequence.index(depths)
        assert _largest_mflops(depths) <= maximum < _largest_mflops(sequence[step + 1]), (maximum, depths)


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
