"""The Arch value type: one canonical string and JSON form, and clear errors for bad input."""

import pytest
from torch_reference import timm_cream

from cream_tf import zoo
from cream_tf.arch import Arch, SearchSpace, block_specs, make_divisible
from cream_tf.candidates import PAPER


def test_canonical_string_round_trips_every_field():
    arch = Arch(
        ((3,), (3, 1), (3, 1), (3, 3, 3), (3, 3)),
        input_size=28,
        in_channels=1,
        num_classes=10,
        stem_channels=24,
        stem_stride=1,
        dropout=0.1,
        drop_path=0.05,
    )
    text = str(arch)
    assert text == "[3][3,1][3,1][3,3,3][3,3]@28;in=1;classes=10;stem=24/1;dropout=0.1;drop_path=0.05"
    assert Arch.parse(text) == arch
    assert Arch.from_json(arch.to_json()) == arch


def test_bare_path_takes_imagenet_defaults():
    arch = Arch.parse("[3][3,3][3,1,3][3,3,3,3][3,3,3]")
    assert (arch.input_size, arch.in_channels, arch.num_classes, arch.stem_stride) == (224, 3, 1000, 2)
    assert arch.depths == (1, 2, 3, 4, 3)


def test_make_divisible_matches_the_rounding_rule():
    assert make_divisible(16 * 0.25) == 8
    assert make_divisible(24 * 4.5) == 112  # 108 rounds up to the nearest multiple of 8
    assert make_divisible(10) == 16  # 8 would be more than 10% below 10


def test_block_specs_follow_the_search_space_table():
    specs = block_specs(zoo.arch_of("cream_287"))
    kinds = [s.kind for s in specs]
    assert kinds == ["stem", "ds"] + ["ir"] * 13 + ["cn"]
    ds = specs[1]
    assert (ds.in_channels, ds.out_channels, ds.se_channels, ds.residual) == (16, 16, 8, True)
    first = specs[2]  # stage 1, choice 3 = k5 e6, stride 2
    assert (first.kernel, first.stride, first.mid_channels, first.se_channels) == (5, 2, 96, 24)
    assert not first.residual
    second = specs[3]  # stage 2 first block after c24: 24 * 6 = 144 expanded
    assert (second.in_channels, second.mid_channels, second.out_channels) == (24, 144, 40)
    assert specs[-1].out_size == 7 and specs[-1].out_channels == 320


@pytest.mark.parametrize(
    "text, message",
    [
        ("[3][3,3]", "Malformed architecture string"),
        ("3-3-3-3-3", "Malformed architecture string"),
        ("[3][3][3][3][6]", "Choice index 6 in stage 5 is out of range; valid is 0..5"),
        ("[3][3][3][3][3,3,3,3,3,3,3]", "Stage 5 (c192) has 7 blocks; valid is 1..6"),
        ("[3][3][3][3][3]@16", "input_size 16 is too small"),
        ("[3][3][3][3][3];colour=1", "Malformed setting 'colour=1'"),
        ("[3][3][3][3][3];classes=ten", "not a number"),
        ("[3][3][3][3][3];classes=0", "num_classes must be an integer >= 1; got 0"),
        ("[3][3][3][3][3];dropout=1.5", "dropout must be in [0, 1); got 1.5"),
    ],
)
def test_bad_strings_are_rejected_with_the_value_and_what_is_valid(text, message):
    with pytest.raises(ValueError) as error:
        Arch.parse(text)
    assert message in str(error.value)


def test_small_inputs_need_stride_one_stem():
    with pytest.raises(ValueError, match="at least 32 pixels"):
        Arch.parse("[0][0][0][0][0]@28")
    arch = Arch.parse("[0][0][0][0][0]@28;in=1;stem=16/1")
    assert block_specs(arch)[-1].out_size == 2


@pytest.mark.parametrize("choice", range(6))
def test_each_choice_decodes_to_the_kernel_and_expansion_timm_builds(choice):
    """Choice index -> (kernel, expansion) is checked against what timm builds from the block strings
    of tests/torch_reference.py (written from the paper's table, not from candidates.PAPER), at every
    position of a search space, first (stride 2) and later (stride 1) blocks of a stage alike."""
    space = SearchSpace.create((2, 1, 1, 1, 2))
    arch = space.arch([choice] * len(space.positions))
    reference = timm_cream(arch.choices)
    blocks = [spec for spec in block_specs(arch) if spec.kind == "ir"]
    assert [(spec.stage, spec.index) for spec in blocks] == space.positions
    # The supernet's per-position table decodes the same blocks.
    assert [row[choice] for row in space.choice_specs()] == blocks
    for spec in blocks:
        theirs = reference.blocks[spec.stage][spec.index]
        kernel = theirs.conv_dw.kernel_size[0]
        expansion = theirs.conv_pw.out_channels / theirs.conv_pw.in_channels
        assert spec.choice == choice
        assert (PAPER[choice].kernel, PAPER[choice].expansion) == (kernel, expansion), spec.name
        assert (spec.kernel, spec.kernel) == theirs.conv_dw.kernel_size, spec.name
        assert spec.stride == theirs.conv_dw.stride[0], spec.name
        # Every stage width times 4 or 6 is a multiple of 8, so the expanded width is exact.
        assert spec.mid_channels == spec.in_channels * expansion, spec.name
        assert (spec.in_channels, spec.mid_channels, spec.out_channels, spec.se_channels) == (
            theirs.conv_pw.in_channels,
            theirs.conv_pw.out_channels,
            theirs.conv_pwl.out_channels,
            theirs.se.conv_reduce.out_channels,
        ), spec.name


def test_choices_are_six_distinct_kernel_expansion_pairs():
    pairs = {(op.kernel, op.expansion) for op in PAPER}
    assert len(PAPER) == 6 and len(pairs) == 6
    assert all(op.kind == "mbconv" and op.se == 0.25 and op.activation == "swish" and op.dilation == 1 for op in PAPER)


def test_unknown_json_field_is_named():
    data = zoo.arch_of("cream_14").to_json()
    data["width"] = 2
    with pytest.raises(ValueError, match=r"Unknown architecture field\(s\) \['width'\]"):
        Arch.from_json(data)
