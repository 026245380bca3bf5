"""LiteRT metadata in TFLite files: written, read back, packed labels, and the model unchanged."""

import io
import zipfile

import numpy as np
import pytest
import tensorflow as tf

from cream_tf import tflite_metadata
from cream_tf.arch import Arch
from cream_tf.childnet import build_child

LABELS = [f"class {i}" for i in range(10)]
MEAN, STD = [0.2860 * 255], [0.3530 * 255]  # Fashion-MNIST's, in pixel units


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny grayscale classifier as float32 and as full-int8 TFLite, and images for each."""
    folder = tmp_path_factory.mktemp("tiny") / "saved_model"
    build_child(Arch.parse("[0][0][0][0][0]@32;in=1;classes=10"), name="tiny").export(
        str(folder), format="tf_saved_model", verbose=False
    )
    images = np.random.default_rng(0).normal(size=(3, 32, 32, 1)).astype("float32")
    float32 = tf.lite.TFLiteConverter.from_saved_model(str(folder)).convert()
    converter = tf.lite.TFLiteConverter.from_saved_model(str(folder))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None]] for image in images)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    return {"float32": float32, "int8": converter.convert()}, images


def described(model: bytes, **changes) -> bytes:
    arguments = dict(name="tiny", description="A tiny classifier.", version="1", mean=MEAN, std=STD)
    arguments.update(labels=LABELS, color_space="GRAYSCALE", author="tests")
    return tflite_metadata.with_metadata(model, **{**arguments, **changes})


def outputs(model: bytes, images) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=model).get_signature_runner()
    ((name, detail),) = runner.get_input_details().items()
    if detail["dtype"] == np.int8:
        scale, zero_point = detail["quantization"]
        images = np.clip(np.round(images / scale) + zero_point, -128, 127).astype(np.int8)
    return np.stack([next(iter(runner(**{name: image[None]}).values())) for image in images])


def test_metadata_reads_back_as_written(models):
    float32 = models[0]["float32"]
    assert tflite_metadata.read_metadata(float32) is None
    meta = tflite_metadata.read_metadata(described(float32))
    assert (meta["name"], meta["description"], meta["version"]) == ("tiny", "A tiny classifier.", "1")
    assert meta["min_parser_version"] == "1.0.0"
    assert meta["input"]["color_space"] == "GRAYSCALE"
    assert meta["input"]["mean"] == pytest.approx(MEAN) and meta["input"]["std"] == pytest.approx(STD)
    # The float input's range for 0-255 pixels, as tflite-support's image classifier writer records it.
    assert meta["input"]["min"] == pytest.approx([-MEAN[0] / STD[0]], rel=1e-6)
    assert meta["input"]["max"] == pytest.approx([(255 - MEAN[0]) / STD[0]], rel=1e-6)
    assert meta["output"]["label_files"] == ["labels.txt"] and meta["labels"] == LABELS


def test_int8_model_carries_the_float_normalization(models):
    meta = tflite_metadata.read_metadata(described(models[0]["int8"]))
    assert meta["input"]["mean"] == pytest.approx(MEAN) and meta["input"]["std"] == pytest.approx(STD)
    assert meta["input"]["min"] is None  # no float range for an int8 input
    assert "dequantize" in meta["output"]["description"]


@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_model_gives_the_same_outputs_with_metadata(models, kind):
    plain, images = models[0][kind], models[1]
    with_meta = described(plain)
    assert len(with_meta) > len(plain)
    assert np.array_equal(outputs(with_meta, images), outputs(plain, images))


def test_labels_are_a_zip_appended_to_the_model(models):
    model = described(models[0]["float32"])
    with zipfile.ZipFile(io.BytesIO(model)) as archive:
        assert archive.namelist() == ["labels.txt"]
        assert archive.getinfo("labels.txt").compress_type == zipfile.ZIP_STORED
        assert archive.read("labels.txt").decode().splitlines() == LABELS
    assert not zipfile.is_zipfile(io.BytesIO(described(models[0]["float32"], labels=None)))


def test_writing_again_replaces_the_metadata(models):
    once = described(models[0]["float32"])
    twice = described(once, name="again", labels=[f"other {i}" for i in range(10)])
    meta = tflite_metadata.read_metadata(twice)
    assert meta["name"] == "again" and meta["labels"][0] == "other 0"
    assert abs(len(twice) - len(once)) < 100  # one metadata buffer and one labels.txt, not two
    with zipfile.ZipFile(io.BytesIO(twice)) as archive:
        assert archive.namelist() == ["labels.txt"]
    unnormalized = tflite_metadata.read_metadata(described(once, mean=None, std=None, labels=None))
    assert unnormalized["input"]["mean"] is None and unnormalized["labels"] is None
    assert unnormalized["output"]["label_files"] == []


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"mean": [1.0, 2.0, 3.0], "std": [1.0, 1.0, 1.0]}, r"mean \[1.0, 2.0, 3.0\] has 3 values for an input of 1"),
        ({"std": [0.0]}, r"std \[0.0\] must be positive"),
        ({"std": None}, "Give both mean and std, or neither"),
        ({"labels": LABELS[:9]}, "labels must be 10 non-empty one-line names, one per output class; got 9"),
        ({"labels": [*LABELS[:9], ""]}, r"got 10, with bad names \[''\]"),
        ({"labels": [*LABELS[:9], "two\nlines"]}, "with bad names"),
        ({"color_space": "RGB"}, r"color_space RGB needs an NHWC input of 3 channels, not \[1, 32, 32, 1\]"),
        ({"color_space": "BGR"}, "Unknown color_space 'BGR'; valid are RGB, GRAYSCALE"),
    ],
)
def test_bad_input_is_named(models, changes, message):
    with pytest.raises(ValueError, match=message):
        described(models[0]["float32"], **changes)
