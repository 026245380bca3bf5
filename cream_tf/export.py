"""Writes a zoo entry folder: the model as `.keras`, TF SavedModel and float32 TFLite, plus metadata
(the folder's layout is in cream_tf.folders). With data it also holds `model_int8.tflite`
(see to_tflite_int8), and metadata.json records the int8 file's quantization and every
format's measured top-1/top-5.

The entry is written under a temporary name beside the target and renamed into place, so a
failed export leaves nothing half-written behind.
"""

from __future__ import annotations

import datetime
import os
import tempfile
from pathlib import Path

import keras
import tensorflow as tf

import cream_tf
from cream_tf import atomic, data, evaluate, native_logs, tflite_metadata
from cream_tf.arch import Arch
from cream_tf.config import DataConfig, ExportConfig, to_dict
from cream_tf.flops import cost_of
from cream_tf.folders import (
    KERAS_FILE,
    LABELS_FILE,
    METADATA_FILE,
    SAVED_MODEL_DIR,
    TFLITE_FLOAT_FILE,
    TFLITE_INT8_FILE,
)


def run_converter(converter) -> bytes:
    """`converter.convert()` of a TFLite converter, its native log lines held (cream_tf.native_logs)."""
    with native_logs.held():
        return converter.convert()


def to_tflite_float(saved_model_dir: Path) -> bytes:
    return run_converter(tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir)))


def to_tflite_int8(source, calibration, input_type=tf.int8) -> bytes:
    """Full-integer quantization: int8 weights, activations, input and output.

    `source` is a SavedModel folder (post-training quantization: `calibration` sets the
    activation ranges) or a quantization-aware tf_keras model (cream_tf.qat: the ranges are its
    fake-quantization ops', and the converter still asks for representative images when only
    int8 ops are allowed).

    Integer input and output make the file run on integer-only hardware (Edge TPU, NPUs,
    microcontrollers) with no float op left; the caller quantizes normalized images with the
    input's scale and zero point and dequantizes the logits with the output's (metadata.json
    records both; cream_tf.evaluate.TFLitePredictor does it). Normalized images are an affine
    map of 8-bit pixels, so int8 input loses next to nothing. `calibration`: float32
    [N, S, S, C] normalized images that set the activation ranges.
    """
    if isinstance(source, (str, os.PathLike)):
        converter = tf.lite.TFLiteConverter.from_saved_model(str(source))
    else:
        converter = tf.lite.TFLiteConverter.from_keras_model(source)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None]] for image in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = input_type
    converter.inference_output_type = tf.int8
    return run_converter(converter)


def with_pixel_input(model: keras.Model, mean, std) -> keras.Model:
    """`model` with its normalization in front: it takes pixel values 0..255."""
    inputs = keras.Input(model.input_shape[1:], name="pixels")
    normalized = keras.layers.Rescaling(
        scale=[1.0 / (255.0 * s) for s in std], offset=[-m / s for m, s in zip(mean, std)], name="normalize"
    )(inputs)
    return keras.Model(inputs, model(normalized), name=model.name)


def to_tflite_int8_pixels(model: keras.Model, calibration, mean, std) -> bytes:
    """As to_tflite_int8, but the file takes raw uint8 pixels: the normalization is folded in
    as the model's first (quantized) op. `calibration` holds normalized images as there."""
    pixels = data.to_pixels(calibration, mean, std)
    # The input's range is what calibration sees; with both ends of 0..255 in it the uint8 input
    # gets scale 1 and zero point 0, so every pixel value goes in exactly.
    pixels[0, 0, 0, :], pixels[0, 0, 1, :] = 0.0, 255.0
    with tempfile.TemporaryDirectory() as folder:
        with_pixel_input(model, mean, std).export(folder, format="tf_saved_model", verbose=False)
        return to_tflite_int8(Path(folder), pixels, input_type=tf.uint8)


def int8_metadata(path: Path, calibration_split: str, calibration_images: int, normalization) -> dict:
    predict = evaluate.TFLitePredictor(path, normalization)

    def tensor(detail):
        scale, zero_point = detail["quantization"]
        return {"dtype": detail["dtype"].__name__, "scale": float(scale), "zero_point": int(zero_point)}

    takes = (
        "raw pixels 0..255 as uint8 (the normalization is inside the model)"
        if predict.takes_pixels
        else "q_in = round(x / scale) + zero_point on normalized images x"
    )
    return {
        "scheme": "full-integer post-training quantization (int8 weights and activations)",
        "input": tensor(predict.input),
        "output": tensor(predict.output),
        "takes": "pixels" if predict.takes_pixels else "normalized",
        "usage": f"{takes}; logits = (q_out - zero_point) * scale",
        "calibration": {"split": calibration_split, "images": calibration_images},
    }


def add_tflite_metadata(folder: Path, metadata: dict, name: str, arch: Arch, labels) -> dict:
    """Writes LiteRT metadata (cream_tf.tflite_metadata) into the entry's TFLite files: name,
    input normalization (metadata.json's `preprocessing`, in 8-bit pixel units; none left for an
    int8 file that takes pixels) and `labels`. Returns what metadata.json records of it."""
    preprocessing = metadata["preprocessing"] or {}
    normalized = None
    if "mean" in preprocessing:
        if preprocessing.get("scale", "x / 255") != "x / 255":
            raise ValueError(f"preprocessing scale {preprocessing['scale']!r}: TFLite metadata needs 'x / 255'.")
        normalized = {key: [round(255 * v, 6) for v in preprocessing[key]] for key in ("mean", "std")}
    color = "GRAYSCALE" if arch.in_channels == 1 else "RGB"
    description = (
        f"Cream of the Crop child network {arch} ({metadata['flops']['mflops']} MFLOPs): classifies "
        f"{arch.input_size}x{arch.input_size} {color} images into {arch.num_classes} classes."
    )
    written = {}
    for key, file in metadata["files"].items():
        if not key.startswith("tflite"):
            continue
        normalization = normalized
        if key == "tflite_int8" and metadata["tflite_int8"]["takes"] == "pixels":
            normalization = {"mean": [0.0] * arch.in_channels, "std": [1.0] * arch.in_channels}
        described = tflite_metadata.with_metadata(
            (folder / file).read_bytes(),
            name=name,
            description=description,
            version=metadata["created"],
            **(normalization or {"mean": None, "std": None}),
            labels=labels,
            color_space=color,
            author=f"cream_tf {cream_tf.__version__}",
        )
        atomic.write_bytes(folder / file, described)
        written[file] = normalization
    return {
        "normalization": written,
        "units": "8-bit pixels (0-255)",
        "labels": LABELS_FILE if labels else None,
        "read": "cream_tf.tflite_metadata",
    }


def measure_formats(
    folder: Path,
    files: dict,
    config: DataConfig,
    split: str,
    max_batches: int,
    normalization: tuple,
    extra: dict | None = None,
) -> dict:
    """Top-1/top-5 of every format in `folder` (and of the `extra` predictors, {name: predictor})
    on the same images in one pass (see cream_tf.evaluate); `normalization` (mean, std) feeds a
    file that takes pixels. `changes` records, per format, what it changes against the Keras
    model's classes (evaluate.changes): whether a quantized file's gap is more than the test set
    resolves."""
    predictors = {
        name: evaluate.predictor(folder / file, normalization) for name, file in files.items() if name != "saved_model"
    }
    predictors.update(extra or {})
    for predict in predictors.values():
        evaluate.check_fits(predict, config)
    reference = "keras" if "keras" in predictors else None
    figures = evaluate.compare(predictors, data.load(config, split, training=False), max_batches, reference)
    accuracy = {
        "split": split,
        "images": figures[next(iter(figures))]["images"],
        "batches": max_batches or "all",
        "top1": {name: f["top1"] for name, f in figures.items()},
        "top5": {name: f["top5"] for name, f in figures.items()},
    }
    if reference:
        accuracy["changes"] = {name: f["changes"] for name, f in figures.items() if name != reference}
    return accuracy


# Who writes entry folders; metadata.json's `produced_by`.
PRODUCERS = ("export", "convert", "search", "retrain", "qat")
# The keys of every entry's metadata.json, whoever wrote it (null where the writer does not know
# the value: `data` and `labels` without data, `accuracy` and `tflite_int8` when not measured);
# each writer adds its own record beside them (`search`, `retrain`, `checkpoint`, `quantization`).
ENTRY_KEYS = (
    "format_version",
    "produced_by",
    "architecture",
    "input",
    "preprocessing",
    "flops",
    "parameters",
    "weights",
    "data",
    "labels",
    "files",
    "tflite_int8",
    "accuracy",
    "tflite_metadata",
    "created",
    "versions",
)


def metadata_for(
    arch: Arch,
    *,
    produced_by: str,
    weights_source: str,
    preprocessing: dict | None,
    data_config: DataConfig | None = None,
    labels=None,
    extra: dict | None = None,
) -> dict:
    """An entry's metadata.json with every key of ENTRY_KEYS; `extra` is the writer's own record."""
    if produced_by not in PRODUCERS:
        raise ValueError(f"produced_by={produced_by!r} is not valid; valid: {', '.join(PRODUCERS)}.")
    cost = cost_of(arch)
    data = {
        "format_version": 2,
        "produced_by": produced_by,
        "architecture": arch.to_json(),
        "input": {
            "shape": [arch.input_size, arch.input_size, arch.in_channels],
            "layout": "NHWC",
            "dtype": "float32",
            "output": f"logits over {arch.num_classes} classes",
        },
        "preprocessing": preprocessing,
        "flops": {"multiply_adds": cost.macs, "mflops": round(cost.macs / 1e6, 3)},
        "parameters": cost.params,
        "weights": weights_source,
        "data": to_dict(data_config) if data_config is not None else None,  # what --mode=qat trains on
        "labels": list(labels) if labels is not None else None,
        "files": {"keras": KERAS_FILE, "saved_model": SAVED_MODEL_DIR, "tflite_float32": TFLITE_FLOAT_FILE},
        "tflite_int8": None,
        "accuracy": None,
        "tflite_metadata": None,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": {"cream_tf": cream_tf.__version__, "tensorflow": tf.__version__, "keras": keras.__version__},
    }
    data.update(extra or {})
    return data


def write_entry(
    model: keras.Model,
    arch: Arch,
    output_dir,
    *,
    weights_source: str,
    preprocessing: dict | None = None,
    produced_by: str = "export",
    extra_metadata: dict | None = None,
    overwrite: bool = False,
    data_config: DataConfig | None = None,
    export_config: ExportConfig | None = None,
    labels: tuple[str, ...] | None = None,
    measure: bool = True,
) -> Path:
    """Exports `model` (built for `arch`) as a zoo entry folder at `output_dir`; returns its path.

    With `data_config` (data the model fits) metadata.json records it, with its preprocessing
    (unless `preprocessing` is given) and class names (unless `labels` are; they also go to
    labels.txt); and with `measure` it also writes model_int8.tflite, calibrated on training
    images (unless export_config.int8 is off), and measures every format's accuracy.
    """
    export_config = export_config or ExportConfig()
    if labels is None and data_config is not None:
        labels = data.class_names(data_config)
    if preprocessing is None and data_config is not None:
        preprocessing = data.preprocessing_metadata(data_config)
    if labels is not None and len(labels) != arch.num_classes:
        raise ValueError(f"{len(labels)} class names for a model of {arch.num_classes} classes; give one per class.")
    with atomic.staged_folder(output_dir, overwrite=overwrite) as staging:
        model.save(staging / KERAS_FILE)
        model.export(str(staging / SAVED_MODEL_DIR), format="tf_saved_model", verbose=False)
        atomic.write_bytes(staging / TFLITE_FLOAT_FILE, to_tflite_float(staging / SAVED_MODEL_DIR))
        metadata = metadata_for(
            arch,
            produced_by=produced_by,
            weights_source=weights_source,
            preprocessing=preprocessing,
            data_config=data_config,
            labels=labels,
            extra=extra_metadata,
        )
        if labels is not None:
            atomic.write_bytes(staging / LABELS_FILE, "".join(f"{name}\n" for name in labels).encode())
        if data_config is not None and measure:
            evaluate.check_fits(evaluate.KerasPredictor(model), data_config)
            normalization = (preprocessing["mean"], preprocessing["std"])
            if export_config.int8:
                count = min(export_config.calibration_images, data.num_examples(data_config, "train"))
                calibration = data.sample_images(data_config, "train", count)
                if export_config.int8_input == "pixels":
                    int8 = to_tflite_int8_pixels(model, calibration, *normalization)
                else:
                    int8 = to_tflite_int8(staging / SAVED_MODEL_DIR, calibration)
                atomic.write_bytes(staging / TFLITE_INT8_FILE, int8)
                metadata["files"]["tflite_int8"] = TFLITE_INT8_FILE
                metadata["tflite_int8"] = int8_metadata(staging / TFLITE_INT8_FILE, "train", count, normalization)
            metadata["accuracy"] = measure_formats(
                staging,
                metadata["files"],
                data_config,
                export_config.eval_split,
                export_config.eval_batches,
                normalization,
            )
        # Metadata keeps the outputs bit for bit (tests/test_tflite_metadata.py): the accuracy above holds.
        metadata["tflite_metadata"] = add_tflite_metadata(staging, metadata, model.name, arch, labels)
        atomic.write_json(staging / METADATA_FILE, metadata)
    return Path(output_dir)
