"""Writes a zoo entry folder: the model as `.keras`, TF SavedModel and float32 TFLite, plus metadata.

An entry folder holds:

    model.keras            opens with keras.models.load_model, no cream_tf needed
    saved_model/           for TF Serving and tf.saved_model.load (signature 'serve')
    model_float32.tflite   for ai_edge_litert / TFLite on device
    metadata.json          architecture, input and preprocessing, FLOPs, parameters, weights source

The entry is written under a temporary name beside the target and renamed into place, so a
failed export leaves nothing half-written behind.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import keras
import tensorflow as tf

import cream_tf
from cream_tf import atomic
from cream_tf.arch import Arch
from cream_tf.flops import cost_of

KERAS_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"
TFLITE_FLOAT_FILE = "model_float32.tflite"
METADATA_FILE = "metadata.json"


def to_tflite_float(saved_model_dir: Path) -> bytes:
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    return converter.convert()


def metadata_for(arch: Arch, *, weights_source: str, preprocessing: dict, extra: dict | None = None) -> dict:
    cost = cost_of(arch)
    data = {
        "format_version": 1,
        "architecture": arch.to_json(),
        "input": {"shape": [arch.input_size, arch.input_size, arch.in_channels], "layout": "NHWC",
                  "dtype": "float32", "output": f"logits over {arch.num_classes} classes"},
        "preprocessing": preprocessing,
        "flops": {"multiply_adds": cost.macs, "mflops": round(cost.macs / 1e6, 3)},
        "parameters": cost.params,
        "weights": weights_source,
        "files": {"keras": KERAS_FILE, "saved_model": SAVED_MODEL_DIR, "tflite_float32": TFLITE_FLOAT_FILE},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"cream_tf": cream_tf.__version__, "tensorflow": tf.__version__, "keras": keras.__version__},
    }
    data.update(extra or {})
    return data


def write_entry(model: keras.Model, arch: Arch, output_dir, *, weights_source: str,
                preprocessing: dict, extra_metadata: dict | None = None, overwrite: bool = False) -> Path:
    """Exports `model` (built for `arch`) as a zoo entry folder at `output_dir`; returns its path."""
    with atomic.staged_folder(output_dir, overwrite=overwrite) as staging:
        model.save(staging / KERAS_FILE)
        model.export(str(staging / SAVED_MODEL_DIR), format="tf_saved_model", verbose=False)
        atomic.write_bytes(staging / TFLITE_FLOAT_FILE, to_tflite_float(staging / SAVED_MODEL_DIR))
        atomic.write_json(staging / METADATA_FILE, metadata_for(
            arch, weights_source=weights_source, preprocessing=preprocessing, extra=extra_metadata))
    return Path(output_dir)
