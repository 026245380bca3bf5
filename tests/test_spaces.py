"""Search spaces from the config: the candidate kinds against independent builds, one description
(the architecture string) for every space, one trace for every path, bad candidates refused."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch
from test_flops import _keras_macs
from timm.layers import get_act_layer
from timm.models._efficientnet_blocks import InvertedResidual, SqueezeExcite
from timm.models._efficientnet_builder import round_channels

from cream_tf import config as config_lib
from cream_tf import zoo
from cream_tf.arch import Arch, SearchSpace, block_specs
from cream_tf.blocks import apply_block, block_layers
from cream_tf.candidates import PRESETS, Candidate, OpSet
from cream_tf.childnet import build_child
from cream_tf.config import SearchConfig
from cream_tf.convert import load_state_dict
from cream_tf.flops import FlopsTable, build_space, cost_of
from cream_tf.search.run import SearchRun
from cream_tf.search.sampler import PathSampler
from cream_tf.supernet import Supernet
from cream_tf.twin import twin_of

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUSTOM = OpSet(
    (
        Candidate(kernel=3, expansion=3, dilation=3, se=0.5, activation="relu"),
        Candidate("bottleneck"),
        Candidate("skip"),
    ),
    fixed_activation="relu6",
    fixed_se=0.0,
)


def _space(ops, depths=(1, 2, 2, 1, 2), size=32):
    return SearchSpace.create(depths, input_size=size, in_channels=1, num_classes=10, stem_stride=1, ops=ops)


def _paths(space, count, seed=0):
    rng = np.random.default_rng(seed)
    return [[int(rng.choice(allowed)) for allowed in space.allowed()] for _ in range(count)]


# --- one description ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*PRESETS, "custom"])
def test_architecture_strings_round_trip_in_every_space(name):
    ops = CUSTOM if name == "custom" else PRESETS[name]
    space = _space(ops)
    for path in _paths(space, 30):
        arch = space.arch(path)
        text = str(arch)
        assert Arch.parse(text) == arch and Arch.from_json(json.loads(json.dumps(arch.to_json()))) == arch
        suffix = {"paper": "", "custom": ";ops=k3_e3_d3_se0.5_relu+bottleneck+skip;fixed=nose_relu6"}
        assert text.endswith(suffix.get(name, f";space={name}")), text
        assert ";space=" not in text and ";ops=" not in text if name == "paper" else True


def test_existing_strings_and_stored_results_read_as_before():
    """Every zoo model and an entry's architecture as written before spaces existed (no `ops`
    key) parse to the paper's space and print the same string."""
    for name in zoo.names():
        arch = zoo.arch_of(name)
        assert arch.ops == PRESETS["paper"] and str(Arch.parse(str(arch))) == str(arch)
    stored = {  # metadata.json "architecture" of the default search's winner, as exported in 2026-12
        "choices": [[2], [3], [3, 3, 5], [3], [3]],
        "input_size": 28,
        "in_channels": 1,
        "num_classes": 10,
        "stem_channels": 16,
        "stem_stride": 1,
        "dropout": 0.0,
        "drop_path": 0.0,
        "string": "[2][3][3,3,5][3][3]@28;in=1;classes=10;stem=16/1;dropout=0;drop_path=0",
    }
    arch = Arch.from_json(stored)
    assert str(arch) == stored["string"] and arch.ops == PRESETS["paper"]
    assert round(cost_of(arch).macs / 1e6, 2) == 11.03  # the figure the default search reported


def test_preset_files_are_the_presets():
    for name in ("extended", "depth", "npu"):
        config = config_lib.load(
            SearchConfig, f"{REPO}/configs/search/fashion_mnist.yaml,{REPO}/configs/spaces/{name}.yaml"
        )
        config.validate()
        assert config.space.opset() == PRESETS[name] and config.cream.prior == ()
        assert config.data.image_size == 28  # the search config's keys kept under the space's


# --- the candidate kinds --------------------------------------------------------------------------

# Stage 2 (c24 -> c40, stride 2) then c40 -> c40 (stride 1): each kind at a strided position that
# changes the channels and at an identity position; skip only at the second.
KINDS = {
    "dilated": OpSet((Candidate(kernel=3, expansion=6, dilation=2), Candidate(kernel=5, expansion=4, dilation=3))),
    "bottleneck": OpSet((Candidate("bottleneck"),)),
    "skip": OpSet((Candidate(kernel=3, expansion=4), Candidate("skip"))),
    "relu": OpSet((Candidate(kernel=3, expansion=4, activation="relu"),), "relu", 0.0),
    "relu6": OpSet((Candidate(kernel=5, expansion=3, se=0.0, activation="relu6"),), "relu6", 0.0),
    "hard_swish": OpSet((Candidate(kernel=3, expansion=6, se=0.5, activation="hard_swish"),), "hard_swish"),
}


@pytest.mark.parametrize("kind", KINDS)
def test_children_multiply_adds_and_parameters_equal_the_counter(kind):
    ops = KINDS[kind]
    space = _space(ops, depths=(2, 2, 2, 2, 2), size=28)
    last = len(ops.ops) - 1
    paths = [[last] * len(space.positions), [0] * len(space.positions)]
    if kind == "skip":
        paths[0] = [1 if allowed[-1] == 1 else 0 for allowed in space.allowed()]
    table = FlopsTable(space)
    for path in paths:
        arch = space.arch(path)
        model = build_child(arch)
        cost = cost_of(arch)
        assert cost.macs == _keras_macs(model) == table.macs(path), (kind, str(arch))
        assert cost.params == sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    if kind == "skip":  # a skipped block has no layers and costs nothing
        assert table.macs(paths[0]) < table.macs(paths[1])
        assert not [layer for layer in build_child(space.arch(paths[0])).layers if layer.name.startswith("blocks_2_1")]


class OfficialBottleneck(torch.nn.Module):
    """microsoft/Cream lib/models/blocks/residual_block.py's `Bottleneck`, written from its
    description: 1x1 (out/4), 3x3 (stride), 1x1 (out), biases, BN after each, ReLU; a 1x1 + BN
    projection when the channels differ; ReLU after the sum."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        planes = cout // 4
        nn = torch.nn
        self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, stride, padding=1), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, cout, 1), nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride), nn.BatchNorm2d(cout))

    def forward(self, x):
        relu = torch.relu
        out = relu(self.bn1(self.conv1(x)))
        out = relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return relu(out + (self.downsample(x) if self.downsample is not None else x))


def _timm_dilated(spec):
    se = lambda channels, rd_channels=None, **kw: SqueezeExcite(
        channels,
        rd_channels=spec.se_channels,
        gate_layer="hard_sigmoid",
        force_act_layer=torch.nn.ReLU,
        rd_round_fn=round_channels,
    )
    return InvertedResidual(
        spec.in_channels,
        spec.out_channels,
        dw_kernel_size=spec.kernel,
        stride=spec.stride,
        dilation=spec.dilation,
        exp_ratio=spec.mid_channels / spec.in_channels,
        act_layer=get_act_layer("swish"),
        se_layer=se,
    )


@pytest.mark.parametrize(
    "kind, position", [("bottleneck", 0), ("bottleneck", 1), ("dilated", 0), ("dilated", 1)], ids=str
)
def test_bottleneck_and_dilated_block_equal_pytorch_with_the_same_weights(kind, position):
    """One block at stage 2's strided first position (projection) and at its second (identity)."""
    ops = (
        OpSet((Candidate("bottleneck"),))
        if kind == "bottleneck"
        else OpSet((Candidate(kernel=5, expansion=6, dilation=2),))
    )
    arch = _space(ops, depths=(1, 2, 1, 1, 1), size=32).arch([0] * 6)
    spec = [s for s in block_specs(arch) if s.stage == 2][position]
    torch.manual_seed(position)
    theirs = (
        OfficialBottleneck(spec.in_channels, spec.out_channels, spec.stride)
        if kind == "bottleneck"
        else _timm_dilated(spec)
    )
    for module in theirs.modules():  # BatchNorm statistics that are not the identity
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    theirs.eval()
    inputs = keras.Input((spec.in_size, spec.in_size, spec.in_channels))
    ours = keras.Model(inputs, apply_block(block_layers(spec), inputs))
    # The torch names of cream_tf's layers (blocks_2_1_conv1 -> blocks.2.1.conv1).
    state = {f"blocks.2.{position}.{key}": value for key, value in theirs.state_dict().items()}
    load_state_dict(ours, state)
    images = np.random.default_rng(0).normal(size=(2, spec.in_size, spec.in_size, spec.in_channels)).astype("float32")
    expected = theirs(torch.from_numpy(images).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
    got = ours(images, training=False).numpy()
    assert got.shape == expected.shape and np.abs(expected).max() > 0.1
    np.testing.assert_allclose(got, expected, atol=2e-5)


@pytest.mark.parametrize("name", ["extended", "depth", "npu"])
def test_the_tf_keras_twin_is_the_same_network_in_every_preset(name):
    space = _space(PRESETS[name], depths=(1, 2, 2, 1, 2), size=28)
    path = max(_paths(space, 20, seed=1), key=lambda p: len(set(p)))  # many kinds in one network
    arch = space.arch(path)
    model = build_child(arch)
    images = np.random.default_rng(2).normal(size=(2, 28, 28, 1)).astype("float32")
    twin_of(model, arch, images, tolerance=1e-5)  # raises when the outputs differ


def test_npu_int8_file_is_integer_only_and_every_preset_takes_qat(tmp_path):
    """The npu space's point: its int8 file has no LOGISTIC (swish's sigmoid) and no float tensor.
    And TFMOT's QAT wraps every layer the presets add (hard-swish, a dilated convolution's
    subsampling between it and its BatchNorm's successors, the bottleneck)."""
    from ai_edge_litert.interpreter import Interpreter

    from cream_tf import export
    from cream_tf.qat import quantize_model

    images = np.random.default_rng(0).normal(size=(8, 28, 28, 1)).astype("float32")
    for name, path in (
        ("npu", [0, 1, 4, 5, 3, 2, 7]),
        ("extended", [6, 7, 8, 8, 3, 2, 7]),
        ("depth", [3, 3, 6, 3, 6, 3, 3]),
    ):
        arch = _space(PRESETS[name], depths=(1, 2, 2, 1, 1), size=28).arch(path)
        model = build_child(arch)
        quantized = quantize_model(twin_of(model, arch, images[:2]))
        assert quantized(images[:2], training=False).shape == (2, 10), name
        if name == "npu":
            model.export(str(tmp_path / "saved"), verbose=False)
            interpreter = Interpreter(model_content=export.to_tflite_int8(str(tmp_path / "saved"), images))
            ops = {op["op_name"] for op in interpreter._get_ops_details()}
            assert "LOGISTIC" not in ops and "HARD_SWISH" in ops, ops
            dtypes = {t["dtype"] for t in interpreter.get_tensor_details()}
            assert dtypes <= {np.int8, np.int32}, dtypes


# --- the supernet and the search ------------------------------------------------------------------

TINY = """
data: {name: fashion_mnist, image_size: 16, channels: 1, num_classes: 10, validation_size: 256, batch_size: 32}
space: {flops_max: 100, depths: [1, 2, 1, 1, 1], stem_stride: 1, stem_channels: 8}
cream: {pick_method: none, board_size: 2, warmup_epochs: 1}
train: {epochs: 2, steps_per_epoch: 3, lr: 0.05}
selection: {recalibrate_batches: 2, eval_batches: 2, export_paths: winner}
"""


@pytest.mark.parametrize("name", ["extended", "depth", "npu"])
def test_a_tiny_search_in_each_preset_traces_once_and_exports_a_plain_keras_model(tmp_path, name):
    """Every path a search samples runs through the one traced step; the winner of the preset's
    space is a `.keras` file that plain Keras loads and a TFLite file that gives its outputs."""
    from ai_edge_litert.interpreter import Interpreter

    (tmp_path / "tiny.yaml").write_text(TINY)
    # The depth space with Cream's own teaching (the train step's cond around the supernet): a
    # position's disallowed skip must not put one layer in two of its switch_case's branches.
    meta = "cream.pick_method=meta,cream.meta_update_every=2" if name == "depth" else ""
    config = config_lib.load(SearchConfig, f"{tmp_path / 'tiny.yaml'},{REPO}/configs/spaces/{name}.yaml", meta)
    search = SearchRun(config, tmp_path / "run", strategy=tf.distribute.get_strategy())
    result = search.run()
    assert search.fit_model.traces["train"] == 1 and len(search.history) == 6
    winner = result["winner"]
    assert winner["arch"].endswith(f";space={name}") and Arch.parse(winner["arch"]).ops == PRESETS[name]
    entry = tmp_path / "run" / winner["entry"]
    model = keras.models.load_model(entry / "model.keras")
    assert Arch.from_json(json.loads((entry / "metadata.json").read_text())["architecture"]) == Arch.parse(
        winner["arch"]
    )
    images = np.random.default_rng(0).normal(size=(1, 16, 16, 1)).astype("float32")
    runner = Interpreter(model_path=str(entry / "model_float32.tflite")).get_signature_runner()
    (tflite,) = runner(**{runner.get_input_details().popitem()[0]: images}).values()
    np.testing.assert_allclose(tflite, model(images, training=False), atol=1e-4)


def test_a_supernet_branch_for_each_candidate_and_children_inherit_it():
    """The custom set (dilation 3 with SE 0.5 and ReLU, the bottleneck, skip; fixed blocks ReLU6
    without SE): paths through every candidate, one trace, each extracted child equal to its path."""
    space = _space(CUSTOM, depths=(1, 2, 2, 1, 2), size=16)
    keras.utils.set_random_seed(0)
    supernet = Supernet(space)
    forward = tf.function(lambda x, p: supernet(x, p, training=False))
    images = np.random.default_rng(0).normal(size=(2, 16, 16, 1)).astype("float32")
    paths = _paths(space, 6, seed=3)
    assert {c for p in paths for c in p} == {0, 1, 2}  # skip included
    for path in paths:
        out = forward(images, tf.constant(path, tf.int32))
        np.testing.assert_allclose(supernet.extract_child(path)(images, training=False), out, atol=1e-5)
    assert forward.experimental_get_tracing_count() == 1
    drawn = [PathSampler(space, (0, 1e6), seed=0).sample()[0] for _ in range(50)]
    assert all(space.arch(p) for p in drawn)  # a skip is never drawn where a stage begins


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("space.candidates=[{kind: conv}]", "Unknown candidate kind 'conv'; valid are mbconv, bottleneck, skip"),
        ("space.candidates=[{activation: gelu}]", "Unknown candidate activation 'gelu'; valid are swish, relu"),
        ("space.candidates=[{kernel: 4}]", "kernel must be an odd integer >= 1; got 4"),
        ("space.candidates=[{dilation: 0}]", "dilation must be an integer >= 1; got 0"),
        ("space.candidates=[{kind: skip}]", "only 'skip' candidates"),
        ("space.candidates=[{kernel: 3}],cream.prior=[0.5,0.5]", "cream.prior"),
        (
            "space.candidates=[{kind: bottleneck}],cream.prior=[],space.flops_max=1",
            "No architecture meets the FLOPs range",
        ),
        ("space.fixed_activation=tanh", "Unknown fixed_activation 'tanh'"),
    ],
)
def test_bad_candidates_are_refused_naming_the_value(override, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        config = config_lib.load(SearchConfig, f"{REPO}/configs/search/fashion_mnist.yaml", override)
        config.validate()
        build_space(config)


def test_a_skip_where_a_stage_begins_is_refused():
    with pytest.raises(ValueError, match="first block of stage 2"):
        Arch.parse("[0][6,0][0][0][0]@32;space=depth")
    with pytest.raises(ValueError, match="Unknown space 'big'; valid are paper, extended, depth, npu"):
        Arch.parse("[0][0][0][0][0]@32;space=big")


def test_official_checkpoints_are_for_the_papers_space_only():
    from cream_tf.convert import build_from_checkpoint

    with pytest.raises(ValueError, match="Official checkpoints hold networks of the paper's space"):
        build_from_checkpoint(Arch.parse("[0][0][0][0][0]@224;space=npu"), checkpoint=None)
