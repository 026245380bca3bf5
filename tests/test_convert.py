"""Official PyTorch checkpoints (.pth.tar) into Keras models and zoo entries with PyTorch's outputs.

The checkpoints here are written the way the official ones are laid out (`state_dict` beside
`state_dict_ema`) from timm builds of the zoo architectures with random weights.
"""

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch
from torch_reference import logits, randomize_bn, timm_cream

from cream_tf import convert, zoo

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4


def reference(name, num_classes=1000, seed=0):
    """A timm build of zoo model `name`: random weights and BatchNorm statistics, eval mode."""
    torch.manual_seed(seed)
    model = randomize_bn(timm_cream(zoo.arch_of(name).choices, num_classes=num_classes), seed=seed)
    with torch.no_grad():
        # timm's initialization gives logits of about 0.1, against which 1e-4 would prove little.
        model.classifier.weight.mul_(30)
    return model


def shifted(state_dict):
    """Other weights of the same shapes, so a test can tell which state dict was taken."""
    return {k: v + 0.5 if v.is_floating_point() else v for k, v in state_dict.items()}


def images_for(name, seed=0):
    size = zoo.arch_of(name).input_size
    return np.random.default_rng(seed).normal(size=(2, size, size, 3)).astype("float32")


def max_difference(keras_model, torch_model, images):
    expected = logits(torch_model, images)
    assert np.abs(expected).max() > 1.0, "logits too small for the comparison to mean anything"
    return np.abs(keras_model(images, training=False).numpy() - expected).max()


@pytest.mark.parametrize("name", zoo.names())
def test_official_checkpoint_gives_pytorch_logits(name, tmp_path):
    model = reference(name)
    path = tmp_path / f"{name}.pth.tar"
    torch.save({"epoch": 499, "state_dict": shifted(model.state_dict()), "state_dict_ema": model.state_dict()}, path)
    converted = zoo.build(name, weights=str(path))
    assert converted.output_shape == (None, 1000)
    assert max_difference(converted, model, images_for(name)) <= TOLERANCE


def _main(*args):
    return subprocess.run([sys.executable, str(REPO / "main.py"), *args], capture_output=True, text=True, cwd=REPO)


def _tflite_logits(path, images):
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner()
    (name,) = runner.get_input_details()
    return np.stack([list(runner(**{name: image[None]}).values())[0][0] for image in images])


@pytest.mark.parametrize("name, use_ema", [("cream_14", False), ("cream_287", True)])
def test_cli_convert_writes_an_entry_whose_every_format_gives_pytorch_logits(name, use_ema, tmp_path):
    model = reference(name, seed=1)
    wanted, other = model.state_dict(), shifted(model.state_dict())
    checkpoint = tmp_path / f"{name}.pth.tar"
    torch.save(
        {"state_dict": wanted if not use_ema else other, "state_dict_ema": wanted if use_ema else other}, checkpoint
    )
    entry = tmp_path / "entry"
    result = _main(
        "--mode=convert",
        f"--zoo={name}",
        f"--checkpoint={checkpoint}",
        f"--output_dir={entry}",
        *([] if use_ema else ["--nouse_ema"]),
    )
    assert result.returncode == 0, result.stderr

    meta = json.loads((entry / "metadata.json").read_text())
    weights = "state_dict_ema" if use_ema else "state_dict"
    assert meta["checkpoint"] == {"path": str(checkpoint.resolve()), "weights": weights, "use_ema": use_ema}
    assert meta["weights"] == f"PyTorch checkpoint {checkpoint.resolve()} ({weights})"
    assert meta["preprocessing"] == json.loads(json.dumps(zoo.IMAGENET_PREPROCESSING))
    assert meta["zoo_name"] == name and meta["architecture"]["num_classes"] == 1000

    images = images_for(name)
    expected = logits(model, images)
    assert np.abs(expected).max() > 1.0
    saved_model = tf.saved_model.load(str(entry / "saved_model"))  # held: its functions need it alive
    outputs = {
        "tflite": _tflite_logits(entry / "model_float32.tflite", images),
        "saved_model": saved_model.serve(tf.constant(images)).numpy(),
        "keras": keras.models.load_model(str(entry / "model.keras"))(images, training=False).numpy(),
    }
    for fmt, got in outputs.items():
        assert np.abs(got - expected).max() <= TOLERANCE, fmt


def test_cli_convert_of_a_checkpoint_for_another_architecture_writes_nothing(tmp_path):
    checkpoint = tmp_path / "cream_43.pth.tar"
    torch.save({"state_dict": reference("cream_43").state_dict()}, checkpoint)
    result = _main(
        "--mode=convert", "--zoo=cream_14", f"--checkpoint={checkpoint}", f"--output_dir={tmp_path / 'entry'}"
    )
    assert result.returncode != 0
    # cream_43 has three blocks in stage 4 where cream_14 has one, and a 3x3 kernel in blocks.2.1.
    assert "unexpected keys (" in result.stderr and "blocks.4.1.conv_pw.weight" in result.stderr
    assert "first shape mismatch: blocks.2.1.conv_dw.weight" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["cream_43.pth.tar"]


@pytest.mark.parametrize(
    "layout, weights",
    [("module_prefix", "state_dict"), ("bare", "bare state dict"), ("bare_module_prefix", "bare state dict")],
)
def test_checkpoint_layouts_and_class_count_from_the_classifier(layout, weights, tmp_path):
    model = reference("cream_14", num_classes=10)
    prefix = "module." if layout.endswith("module_prefix") else ""
    state_dict = {prefix + k: v for k, v in model.state_dict().items()}
    path = tmp_path / "checkpoint.pth"
    torch.save(state_dict if layout.startswith("bare") else {"state_dict": state_dict}, path)
    assert convert.read_checkpoint(path).weights == weights
    converted = zoo.build("cream_14", weights=str(path))
    assert converted.output_shape == (None, 10)
    assert max_difference(converted, model, images_for("cream_14")) <= TOLERANCE


def test_ema_weights_are_taken_unless_use_ema_is_false(tmp_path):
    raw, ema = reference("cream_14", seed=1), reference("cream_14", seed=2)
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"state_dict": raw.state_dict(), "state_dict_ema": ema.state_dict()}, path)
    images = images_for("cream_14")
    assert np.abs(logits(raw, images) - logits(ema, images)).max() > 1.0
    for use_ema, source, weights in [(True, ema, "state_dict_ema"), (False, raw, "state_dict")]:
        assert max_difference(zoo.build("cream_14", weights=str(path), use_ema=use_ema), source, images) <= TOLERANCE
        assert convert.read_checkpoint(path, use_ema=use_ema).metadata() == {
            "path": str(path.resolve()),
            "weights": weights,
            "use_ema": use_ema,
        }


def test_use_ema_takes_state_dict_when_there_is_no_ema_but_not_the_reverse(tmp_path):
    state_dict = reference("cream_14", num_classes=3).state_dict()
    torch.save({"state_dict": state_dict}, tmp_path / "raw.pth.tar")
    torch.save({"state_dict_ema": state_dict}, tmp_path / "ema.pth.tar")
    assert convert.read_checkpoint(tmp_path / "raw.pth.tar", use_ema=True).weights == "state_dict"
    with pytest.raises(
        ValueError,
        match=r"ema\.pth\.tar' has no 'state_dict' \(use_ema=False\); "
        r"its entries are \['state_dict_ema'\]",
    ):
        convert.read_checkpoint(tmp_path / "ema.pth.tar", use_ema=False)


def test_num_classes_that_disagrees_with_the_checkpoint_is_an_error(tmp_path):
    path = tmp_path / "ten.pth.tar"
    torch.save({"state_dict": reference("cream_14", num_classes=10).state_dict()}, path)
    with pytest.raises(
        ValueError,
        match=r"num_classes=1000 disagrees with checkpoint .*ten\.pth\.tar', "
        r"whose classifier\.weight has 10 classes; pass 10",
    ):
        zoo.build("cream_14", num_classes=1000, weights=str(path))
    assert zoo.build("cream_14", num_classes=10, weights=str(path)).output_shape == (None, 10)


def _drop_head_bias(state_dict):
    del state_dict["conv_head.bias"]


def _add_stray_block(state_dict):
    state_dict["blocks.7.0.conv.weight"] = torch.zeros(8, 8, 1, 1)


def _shrink_a_kernel(state_dict):
    state_dict["blocks.2.0.conv_dw.weight"] = torch.zeros(144, 1, 3, 3)  # cream_14 has 5x5 there


@pytest.mark.parametrize(
    "change, message",
    [
        (_drop_head_bias, r"missing keys \(1\): conv_head\.bias$"),
        (_add_stray_block, r"unexpected keys \(1\): blocks\.7\.0\.conv\.weight$"),
        (
            _shrink_a_kernel,
            r"first shape mismatch: blocks\.2\.0\.conv_dw\.weight: checkpoint shape \(144, 1, 3, 3\) "
            r"does not fit layer 'blocks_2_0_conv_dw' weight of shape \(5, 5, 144, 1\)",
        ),
    ],
)
def test_a_checkpoint_that_does_not_fit_names_what_is_wrong(change, message, tmp_path):
    state_dict = reference("cream_14").state_dict()
    change(state_dict)
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"state_dict_ema": state_dict}, path)
    with pytest.raises(ValueError, match=message):
        zoo.build("cream_14", weights=str(path))


def test_files_that_are_not_checkpoints_are_named_in_the_error(tmp_path):
    (tmp_path / "notes.pth.tar").write_text("not a checkpoint")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    torch.save({"epoch": 3}, tmp_path / "no_weights.pt")
    for name, message in [
        ("notes.pth.tar", "is not a PyTorch checkpoint that loads safely"),
        ("list.pth", "holds a list; expected a state dict"),
        (
            "no_weights.pt",
            r"is not a state dict and has no 'state_dict' or 'state_dict_ema'; "
            r"its entries are \['epoch'\]",
        ),
        ("absent.pth.tar", "does not exist or is not a file"),
    ]:
        with pytest.raises(ValueError, match=f"{name}' {message}"):
            zoo.build("cream_14", weights=str(tmp_path / name))


class TrainingConfig:
    """Stands for a training script's own config class pickled into a checkpoint."""

    lr = 0.1


def test_only_plain_option_objects_are_loaded_beside_the_weights(tmp_path):
    state_dict = reference("cream_14", num_classes=2).state_dict()
    timm_style = tmp_path / "timm.pth.tar"
    torch.save({"state_dict": state_dict, "args": argparse.Namespace(model="cream_14", lr=0.1)}, timm_style)
    assert convert.read_checkpoint(timm_style).num_classes == 2
    custom = tmp_path / "custom.pth.tar"
    torch.save({"state_dict": state_dict, "args": TrainingConfig()}, custom)
    with pytest.raises(
        ValueError,
        match=r"(?s)custom\.pth\.tar' is not a PyTorch checkpoint that loads safely "
        r"\(torch\.load with weights_only=True failed: .*TrainingConfig",
    ):
        convert.read_checkpoint(custom)


def test_cream_tf_works_without_torch_and_says_how_to_install_it(tmp_path):
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"state_dict": {}}, path)
    script = textwrap.dedent(f"""
        import sys

        class NoTorch:  # as if torch were not installed
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "torch":
                    raise ModuleNotFoundError(f"No module named {{name!r}}")

        sys.meta_path.insert(0, NoTorch())
        from cream_tf import zoo
        assert zoo.build("cream_14", num_classes=2).output_shape == (None, 2)
        assert "torch" not in sys.modules
        try:
            zoo.build("cream_14", weights={str(path)!r})
        except ImportError as error:
            print(error)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "pip install cream_tf[torch] (or pip install torch==2.14.1)" in result.stdout
