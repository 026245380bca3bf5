"""Writes a zoo entry folder: the model as `.keras`, TF SavedModel and float32 TFLite, plus metadata
(the folder's layout is in cream_tf.folders). With data it also holds `model_int8.tflite`
(see to_tflite_int8), and metadata.json records the int8 file's quantization and every
format's measured top-1/top-5.

The entry is written under a temporary name beside the target and renamed into place, so a
failed export leaves nothing half-written behind.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import keras
import tensorflow as tf

import cream_tf
from cream_tf import atomic, data, evaluate
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


def to_tflite_float(saved_model_dir: Path) -> bytes:
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    return converter.convert()


def to_tflite_int8(saved_model_dir: Path, calibration) -> bytes:
    """Full-integer post-training quantization: int8 weights, activations, input and output.

    Integer input and output make the file run on integer-only hardware (Edge TPU, NPUs,
    microcontrollers) with no float op left; the caller quantizes normalized images with the
    input's scale and zero point and dequantizes the logits with the output's (metadata.json
    records both; cream_tf.evaluate.TFLitePredictor does it). Normalized images are an affine
    map of 8-bit pixels, so int8 input loses next to nothing. `calibration`: float32
    [N, S, S, C] normalized images that set the activation ranges.
    """
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None]] for image in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def int8_metadata(path: Path, calibration_split: str, calibration_images: int) -> dict:
    predict = evaluate.TFLitePredictor(path)

    def tensor(detail):
        scale, zero_point = detail["quantization"]
        return {"dtype": detail["dtype"].__name__, "scale": float(scale), "zero_point": int(zero_point)}

    return {
        "scheme": "full-integer post-training quantization (int8 weights and activations)",
        "input": tensor(predict.input),
        "output": tensor(predict.output),
        "usage": "q_in = round(x / scale) + zero_point on normalized images x; logits = (q_out - zero_point) * scale",
        "calibration": {"split": calibration_split, "images": calibration_images},
    }


def measure_formats(folder: Path, files: dict, config: DataConfig, split: str, max_batches: int) -> dict:
    """Top-1/top-5 of every format in `folder` on the same images (see cream_tf.evaluate)."""
    figures = {
        name: evaluate.evaluate(folder / file, config, split, max_batches)
        for name, file in files.items()
        if name != "saved_model"
    }
    counts = {f["images"] for f in figures.values()}
    return {
        "split": split,
        "images": counts.pop(),
        "batches": max_batches or "all",
        "top1": {name: f["top1"] for name, f in figures.items()},
        "top5": {name: f["top5"] for name, f in figures.items()},
    }


def metadata_for(arch: Arch, *, weights_source: str, preprocessing: dict, extra: dict | None = None) -> dict:
    cost = cost_of(arch)
    data = {
        "format_version": 1,
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
        "files": {"keras": KERAS_FILE, "saved_model": SAVED_MODEL_DIR, "tflite_float32": TFLITE_FLOAT_FILE},
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
    preprocessing: dict,
    extra_metadata: dict | None = None,
    overwrite: bool = False,
    data_config: DataConfig | None = None,
    export_config: ExportConfig | None = None,
    labels: tuple[str, ...] | None = None,
) -> Path:
    """Exports `model` (built for `arch`) as a zoo entry folder at `output_dir`; returns its path.

    With `data_config` (data the model fits) it also writes model_int8.tflite, calibrated on
    training images (unless export_config.int8 is off), and measures every format's accuracy.
    `labels` (default: the data's class names, where the source knows them) go to labels.txt
    and metadata.json.
    """
    export_config = export_config or ExportConfig()
    if labels is None and data_config is not None:
        labels = data.class_names(data_config)
    if labels is not None and len(labels) != arch.num_classes:
        raise ValueError(f"{len(labels)} class names for a model of {arch.num_classes} classes; give one per class.")
    with atomic.staged_folder(output_dir, overwrite=overwrite) as staging:
        model.save(staging / KERAS_FILE)
        model.export(str(staging / SAVED_MODEL_DIR), format="tf_saved_model", verbose=False)
        atomic.write_bytes(staging / TFLITE_FLOAT_FILE, to_tflite_float(staging / SAVED_MODEL_DIR))
        metadata = metadata_for(arch, weights_source=weights_source, preprocessing=preprocessing, extra=extra_metadata)
        if labels is not None:
            atomic.write_bytes(staging / LABELS_FILE, "".join(f"{name}\n" for name in labels).encode())
            metadata["labels"] = list(labels)
        if data_config is not None:
            evaluate.check_fits(evaluate.KerasPredictor(model), data_config)
            metadata["data"] = to_dict(data_config)  # the data it was measured on, which --mode=qat trains on
            if export_config.int8:
                count = min(export_config.calibration_images, data.num_examples(data_config, "train"))
                calibration = data.sample_images(data_config, "train", count)
                atomic.write_bytes(staging / TFLITE_INT8_FILE, to_tflite_int8(staging / SAVED_MODEL_DIR, calibration))
                metadata["files"]["tflite_int8"] = TFLITE_INT8_FILE
                metadata["tflite_int8"] = int8_metadata(staging / TFLITE_INT8_FILE, "train", count)
            metadata["accuracy"] = measure_formats(
                staging, metadata["files"], data_config, export_config.eval_split, export_config.eval_batches
            )
        atomic.write_json(staging / METADATA_FILE, metadata)
    return Path(output_dir)
