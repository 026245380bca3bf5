"""`python main.py --mode=eval`: top-1 and top-5 of a model in any form this project writes.

A model can be given as a Keras model in memory, a `.keras` file, a zoo entry folder (its
model.keras), a `.tflite` file (float or int8, run with ai_edge_litert's Interpreter), or a
retrain model_dir / checkpoint (its EMA weights when EMA was on). Every form is wrapped as a
`Predictor`: float32 images [B, S, S, C] in, float32 logits [B, classes] out, so one counting
loop serves all of them and their figures compare exactly.

Evaluation reads `data.load(config, split, training=False)`: no augmentation, the same images
in the same order on every pass.

Example (needs an entry a retrain wrote; returns top1, top5, images, split, format, source):

    from cream_tf import evaluate
    from cream_tf.config import DataConfig
    figures = evaluate.evaluate("runs/retrain/entry/model_int8.tflite", DataConfig(), "test")
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from cream_tf import data, folders, native_logs
from cream_tf.config import DataConfig

QUANTIZED_DTYPES = (np.int8, np.uint8)


class KerasPredictor:
    def __init__(self, model: keras.Model, format_name: str = "keras", source: str | None = None):
        self.format = format_name
        self.source = source or f"model {model.name!r}"
        self.input_shape = tuple(model.input_shape[1:])
        self.num_classes = int(model.output_shape[-1])
        self._predict = tf.function(lambda images: tf.cast(model(images, training=False), tf.float32))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self._predict(tf.convert_to_tensor(images)).numpy()


class TFLitePredictor:
    """A .tflite model; quantized (int8/uint8) inputs and outputs are converted with the
    scale and zero point stored in the file, so callers always see float images and logits.

    The input's batch dimension is resized to each batch's size (the converter keeps it
    dynamic); a model that refuses the resize is run one image at a time instead.
    """

    def __init__(self, path, normalization: tuple | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.source = str(path)
        with native_logs.held():  # the XNNPACK delegate's INFO line
            self.interpreter = Interpreter(model_path=self.source, num_threads=os.cpu_count() or 1)
            self.interpreter.allocate_tensors()
        (self.input,) = self.interpreter.get_input_details()
        (self.output,) = self.interpreter.get_output_details()
        self.input_shape = tuple(int(d) for d in self.input["shape"][1:])
        self.num_classes = int(self.output["shape"][-1])
        self.quantized = self.input["dtype"] in QUANTIZED_DTYPES
        self.format = "tflite_int8" if self.quantized else "tflite_float32"
        # A uint8 input takes raw pixels (export.int8_input: pixels): normalized images are
        # turned back into the pixels they came from with the entry's mean and std.
        self.takes_pixels = self.input["dtype"] == np.uint8
        self.normalization = normalization or (_entry_normalization(Path(path)) if self.takes_pixels else None)
        self._batch = int(self.input["shape"][0])
        self._resizable = True

    def _resize(self, batch: int) -> bool:
        if batch == self._batch:
            return True
        if not self._resizable:
            return False
        try:
            self.interpreter.resize_tensor_input(self.input["index"], [batch, *self.input_shape], strict=True)
            self.interpreter.allocate_tensors()
        except (RuntimeError, ValueError):
            self._resizable = False
            self.interpreter.resize_tensor_input(self.input["index"], [self._batch, *self.input_shape])
            self.interpreter.allocate_tensors()
            return False
        self._batch = batch
        return True

    def _run(self, images: np.ndarray) -> np.ndarray:
        if self.takes_pixels:
            images = data.to_pixels(images, *self.normalization)
        if self.quantized:
            scale, zero_point = self.input["quantization"]
            info = np.iinfo(self.input["dtype"])
            images = np.clip(np.round(images / scale) + zero_point, info.min, info.max).astype(self.input["dtype"])
        self.interpreter.set_tensor(self.input["index"], images)
        self.interpreter.invoke()
        logits = self.interpreter.get_tensor(self.output["index"])
        if self.output["dtype"] in QUANTIZED_DTYPES:
            scale, zero_point = self.output["quantization"]
            logits = (logits.astype(np.float32) - zero_point) * scale
        return logits.astype(np.float32)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, np.float32)
        if self._resize(len(images)):
            return self._run(images)
        return np.concatenate([self._run(image[None]) for image in images])


def _entry_normalization(path: Path) -> tuple:
    metadata = path.parent / folders.METADATA_FILE
    if not metadata.is_file():
        raise ValueError(
            f"{path} takes raw uint8 pixels (its normalization is inside it); measuring it on normalized "
            f"images needs their mean and std, read from its entry folder's {folders.METADATA_FILE}, which "
            f"{path.parent} lacks. Valid: the file inside the entry folder it was exported to."
        )
    preprocessing = json.loads(metadata.read_text())["preprocessing"]
    return preprocessing["mean"], preprocessing["std"]


def predictor(source, normalization: tuple | None = None):
    """A predictor for a Keras model, a .keras or .tflite file, an entry folder or a retrain model_dir.
    `normalization` (mean, std): for a .tflite file that takes pixels, instead of its entry's metadata."""
    if isinstance(source, keras.Model):
        return KerasPredictor(source)
    path = Path(source)
    if path.is_file() and path.suffix == ".tflite":
        return TFLitePredictor(path, normalization)
    if path.is_file() and path.suffix == ".keras":
        return KerasPredictor(keras.models.load_model(path, compile=False), source=str(path))
    if path.is_dir() and (path / folders.KERAS_FILE).is_file():
        return KerasPredictor(keras.models.load_model(path / folders.KERAS_FILE, compile=False), "entry", str(path))
    model, _ = folders.load_trained(path)  # raises, naming what is valid, for anything else
    return KerasPredictor(model, "checkpoint", str(path))


def accuracy(predict, dataset, max_batches: int = 0) -> dict:
    """Top-1 and top-5 (%) of `predict` over (images, int labels) batches of `dataset`."""
    correct1 = correct5 = total = 0
    for i, (images, labels) in enumerate(dataset):
        if max_batches and i >= max_batches:
            break
        logits = predict(images.numpy())
        labels = np.asarray(labels)
        # A stable sort breaks ties toward the lower class, as tf.argmax does.
        ranked = np.argsort(-logits, axis=-1, kind="stable")[:, :5]
        correct1 += int(np.sum(ranked[:, 0] == labels))
        correct5 += int(np.sum(np.any(ranked == labels[:, None], axis=-1)))
        total += len(labels)
    if total == 0:
        raise ValueError("The evaluation split gave no images; valid is a split holding at least one.")
    return {"top1": round(100.0 * correct1 / total, 4), "top5": round(100.0 * correct5 / total, 4), "images": total}


def check_fits(predict, config: DataConfig) -> None:
    expected = (config.image_size, config.image_size, config.channels)
    if tuple(predict.input_shape) != expected or predict.num_classes != config.num_classes:
        raise ValueError(
            f"{predict.source} takes {list(predict.input_shape)} images and has {predict.num_classes} classes, "
            f"but the data gives {list(expected)} images of {config.num_classes} classes (data.name={config.name!r}); "
            "valid is data that matches the model (set data.image_size, data.channels, data.num_classes)."
        )


def evaluate(source, config: DataConfig, split: str = "test", max_batches: int = 0) -> dict:
    """Top-1/top-5 of `source` (a predictor, or anything `predictor` takes) on `split`;
    max_batches=0 reads all of it."""
    predict = source if isinstance(source, (KerasPredictor, TFLitePredictor)) else predictor(source)
    check_fits(predict, config)
    figures = accuracy(predict, data.load(config, split, training=False), max_batches)
    return {**figures, "split": split, "format": predict.format, "source": predict.source}
