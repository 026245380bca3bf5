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
import json
import os
import shutil
import tempfile
from pathlib import Path

import keras
import tensorflow as tf

import cream_tf
from cream_tf.arch import Arch
from cream_tf.flops import cost_of

KERAS_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"
TFLITE_FLOAT_FILE = "model_float32.tflite"
METADATA_FILE = "metadata.json"


def write_json_atomic(path: Path, data) -> None:
    """Writes JSON under a temporary name in the same folder, then renames it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes files private; an entry is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    output_dir = Path(output_dir)
    if output_dir.exists() and not overwrite:
        raise ValueError(f"Output folder {str(output_dir)!r} already exists; choose a new folder or "
                         "pass overwrite=True (--overwrite) to replace it.")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    staging.chmod(0o755)
    try:
        model.save(staging / KERAS_FILE)
        model.export(str(staging / SAVED_MODEL_DIR), format="tf_saved_model", verbose=False)
        (staging / TFLITE_FLOAT_FILE).write_bytes(to_tflite_float(staging / SAVED_MODEL_DIR))
        write_json_atomic(staging / METADATA_FILE, metadata_for(
            arch, weights_source=weights_source, preprocessing=preprocessing, extra=extra_metadata))
        _move_into_place(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir


def _move_into_place(staging: Path, target: Path) -> None:
    if not target.exists():
        os.rename(staging, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rename(target, old / "entry")
    os.rename(staging, target)
    shutil.rmtree(old, ignore_errors=True)
