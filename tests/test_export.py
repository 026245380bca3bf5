"""Zoo entries: every format gives the in-memory model's outputs; writes are atomic."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from cream_tf import data, export, tflite_metadata, zoo
from cream_tf.flops import cost_of

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def entry(tmp_path_factory):
    arch = zoo.arch_of("cream_14", num_classes=10)
    model = zoo.build("cream_14", num_classes=10)
    path = export.write_entry(
        model,
        arch,
        tmp_path_factory.mktemp("zoo") / "cream_14",
        weights_source="random initialization",
        preprocessing=zoo.IMAGENET_PREPROCESSING,
        labels=data.FASHION_MNIST_CLASSES,
    )
    images = np.random.default_rng(0).normal(size=(3, 64, 64, 3)).astype("float32")
    return path, model, arch, images, model(images, training=False).numpy()


def test_entry_folder_holds_every_format(entry):
    path = entry[0]
    assert sorted(p.name for p in path.iterdir()) == [
        "labels.txt",
        "metadata.json",
        "model.keras",
        "model_float32.tflite",
        "saved_model",
    ]
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_metadata_describes_the_model(entry):
    path, _, arch, _, _ = entry
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["architecture"]["string"] == str(arch)
    assert meta["flops"]["multiply_adds"] == cost_of(arch).macs
    assert meta["parameters"] == cost_of(arch).params
    assert meta["input"]["shape"] == [64, 64, 3]
    assert meta["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert meta["weights"] == "random initialization"
    names = (path / "labels.txt").read_text().splitlines()
    assert names == meta["labels"] == list(data.FASHION_MNIST_CLASSES) and names[9] == "Ankle boot"
    assert "labels" not in meta["files"]  # `files` lists the model's formats, each one measured
    # The schema every writer shares; what this writer did not know or measure is null.
    assert set(meta) == set(export.ENTRY_KEYS) and meta["produced_by"] == "export"
    assert meta["data"] is meta["accuracy"] is meta["tflite_int8"] is None


def test_tflite_file_carries_litert_metadata(entry):
    path = entry[0]
    meta = tflite_metadata.read_metadata((path / "model_float32.tflite").read_bytes())
    assert meta["name"] == "cream_14" and meta["input"]["color_space"] == "RGB"
    assert meta["input"]["mean"] == pytest.approx([255 * m for m in zoo.IMAGENET_PREPROCESSING["mean"]])
    assert meta["labels"] == list(data.FASHION_MNIST_CLASSES)
    recorded = json.loads((path / "metadata.json").read_text())["tflite_metadata"]
    assert list(recorded["normalization"]) == ["model_float32.tflite"] and recorded["labels"] == "labels.txt"


def test_class_names_must_match_the_classifier(tmp_path):
    arch = zoo.arch_of("cream_14", num_classes=10)
    with pytest.raises(ValueError, match="3 class names for a model of 10 classes"):
        export.write_entry(
            zoo.build("cream_14", num_classes=10),
            arch,
            tmp_path / "e",
            weights_source="x",
            preprocessing={},
            labels=("a", "b", "c"),
        )
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("backend", ["tensorflow", "torch"])  # torch: installed with the test requirements
def test_keras_file_loads_in_a_fresh_process_without_cream_tf(entry, tmp_path, backend):
    """Built-in layers only: the file opens without this package, under Keras' PyTorch backend too."""
    path, _, _, images, expected = entry
    np.save(tmp_path / "images.npy", images)
    script = textwrap.dedent(f"""
        import sys, numpy as np, keras
        assert keras.backend.backend() == {backend!r}
        model = keras.models.load_model({str(path / "model.keras")!r})
        logits = model(np.load({str(tmp_path / "images.npy")!r}), training=False)
        np.save({str(tmp_path / "out.npy")!r}, keras.ops.convert_to_numpy(logits))
        assert not any(m.startswith("cream_tf") for m in sys.modules), "cream_tf was imported"
    """)
    env = {**os.environ, "KERAS_BACKEND": backend}
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, env=env)
    assert np.abs(np.load(tmp_path / "out.npy") - expected).max() <= 1e-5


def test_tflite_float_matches_keras(entry):
    from ai_edge_litert.interpreter import Interpreter

    path, _, _, images, expected = entry
    interpreter = Interpreter(model_path=str(path / "model_float32.tflite"))
    runner = interpreter.get_signature_runner()
    (name,) = runner.get_input_details()
    outputs = [list(runner(**{name: image[None]}).values())[0][0] for image in images]
    assert np.abs(np.stack(outputs) - expected).max() <= 1e-4


def test_saved_model_matches_keras(entry):
    path, _, _, images, expected = entry
    loaded = tf.saved_model.load(str(path / "saved_model"))
    assert np.abs(loaded.serve(tf.constant(images)).numpy() - expected).max() <= 1e-5


def test_zoo_build_takes_weights_from_an_entry(entry):
    path, _, _, images, expected = entry
    model = zoo.build("cream_14", num_classes=10, weights=str(path))
    assert np.abs(model(images, training=False).numpy() - expected).max() <= 1e-6
    with pytest.raises(ValueError, match="different architecture"):
        zoo.build("cream_14", num_classes=7, weights=str(path))
    with pytest.raises(ValueError, match="is not a .keras file or a zoo entry folder"):
        zoo.build("cream_14", weights=str(path / "metadata.json"))


def test_failed_export_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(_):
        raise RuntimeError("converter failed")

    monkeypatch.setattr(export, "to_tflite_float", broken)
    arch = zoo.arch_of("cream_14", num_classes=2)
    with pytest.raises(RuntimeError, match="converter failed"):
        export.write_entry(
            zoo.build("cream_14", num_classes=2), arch, tmp_path / "entry", weights_source="x", preprocessing=None
        )
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_is_kept_unless_overwrite(tmp_path):
    target = tmp_path / "entry"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    arch = zoo.arch_of("cream_14", num_classes=2)
    model = zoo.build("cream_14", num_classes=2)
    with pytest.raises(ValueError, match="already exists"):
        export.write_entry(model, arch, target, weights_source="x", preprocessing=None)
    assert (target / "keep.txt").read_text() == "mine"
    export.write_entry(model, arch, target, weights_source="x", preprocessing=None, overwrite=True)
    assert (target / "model.keras").is_file() and not (target / "keep.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


def _main(*args):
    # As a user runs it: no TF_CPP_MIN_LOG_LEVEL of ours (conftest sets one for this process).
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [sys.executable, str(REPO / "main.py"), *args], capture_output=True, text=True, cwd=REPO, env=env
    )


def test_cli_describe_prints_the_table():
    result = _main("--mode=describe", "--zoo=cream_287")
    assert result.returncode == 0, result.stderr
    assert "cream_287 (paper, ImageNet: top-1 77.6" in result.stdout
    assert "290.8M multiply-adds, 6.050M parameters" in result.stdout
    assert "blocks.5.2.conv_pwl" in result.stdout


def test_cli_export_writes_an_entry(tmp_path):
    result = _main(
        "--mode=export", "--arch=[0][0][0][0][0]@28;in=1;classes=10;stem=8/1", f"--output_dir={tmp_path / 'tiny'}"
    )
    assert result.returncode == 0, result.stderr
    meta = json.loads((tmp_path / "tiny" / "metadata.json").read_text())
    assert meta["architecture"]["in_channels"] == 1 and meta["input"]["shape"] == [28, 28, 1]
    # Fresh weights say so, on the console and in the metadata, and claim no published accuracy.
    assert meta["weights"] == "random" and "paper_accuracy" not in meta
    assert result.stdout.startswith("Warning: no --weights given"), result.stdout
    # Saving and converting log through TensorFlow's C++ runtime, absl's Python logger
    # ("Sharding callback duration") and the converter's own absl; none of it shows by default.
    assert result.stderr == "", result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mode=describe", "--zoo=cream_9"], "Unknown zoo model 'cream_9'; valid names are cream_14"),
        (["--mode=describe", "--arch=[3][9][3][3][3]"], "Choice index 9 in stage 2 is out of range"),
        (["--mode=describe"], "Give exactly one of --zoo=NAME or --arch=STRING"),
    ],
)
def test_cli_reports_bad_input(args, message):
    result = _main(*args)
    assert result.returncode != 0
    assert message in result.stderr
