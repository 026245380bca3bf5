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
import math
import os
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from cream_tf import checkpoints, data, folders, native_logs
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
    model, _ = checkpoints.load_trained(path)  # raises, naming what is valid, for anything else
    return KerasPredictor(model, "checkpoint", str(path))


def accuracy(predict, dataset, max_batches: int = 0) -> dict:
    """Top-1 and top-5 (%) of `predict` over (images, int labels) batches of `dataset`."""
    return compare({"model": predict}, dataset, max_batches)["model"]


def compare(predictors: dict, dataset, max_batches: int = 0, reference: str | None = None) -> dict:
    """Top-1 and top-5 (%) of each of `predictors` ({name: predict}) on the same (images, int
    labels) batches of `dataset`, one pass. With `reference` (one of the names), every
    predictor's figures also count what it changes against that one on the same images
    (`changes`; the reference's own: none): images where both predict the same class, images
    the reference gets right and it wrong (`lost`), the reverse (`won`), the paired standard
    error of its top-1 minus the reference's and McNemar's exact p (see paired_standard_error,
    mcnemar_p)."""
    ranked, labels = {name: [] for name in predictors}, []
    for i, (images, batch_labels) in enumerate(dataset):
        if max_batches and i >= max_batches:
            break
        labels.append(np.asarray(batch_labels))
        for name, predict in predictors.items():
            # A stable sort breaks ties toward the lower class, as tf.argmax does.
            ranked[name].append(np.argsort(-predict(images.numpy()), axis=-1, kind="stable")[:, :5])
    total = sum(len(batch) for batch in labels)
    if total == 0:
        raise ValueError("The evaluation split gave no images; valid is a split holding at least one.")
    labels = np.concatenate(labels)
    ranked = {name: np.concatenate(found) for name, found in ranked.items()}
    figures = {
        name: {
            "top1": round(100.0 * int(np.sum(top[:, 0] == labels)) / total, 4),
            "top5": round(100.0 * int(np.sum(np.any(top == labels[:, None], axis=-1))) / total, 4),
            "images": total,
        }
        for name, top in ranked.items()
    }
    if reference is not None:
        base = ranked[reference][:, 0]
        for name, top in ranked.items():
            figures[name]["changes"] = changes(base, top[:, 0], labels, reference)
    return figures


def changes(base: np.ndarray, other: np.ndarray, labels: np.ndarray, reference: str) -> dict:
    """What the classes `other` predicts change against `base`'s on the same labelled images."""
    lost = int(np.sum((base == labels) & (other != labels)))
    won = int(np.sum((base != labels) & (other == labels)))
    return {
        "against": reference,
        "same_class": int(np.sum(base == other)),
        "lost": lost,
        "won": won,
        "paired_standard_error": round(100.0 * paired_standard_error(lost, won, len(labels)), 4),
        "mcnemar_p": round(mcnemar_p(lost, won), 4),
    }


def paired_standard_error(lost: int, won: int, images: int) -> float:
    """Standard error of a top-1 difference between two classifiers measured on the same images,
    as a fraction: each image adds -1 (lost), +1 (won) or 0, so the mean's variance is
    (lost + won - (won - lost)**2 / images) / images**2. With ~90 images changing either way of
    10,000, it is ~0.1 points: a gap much smaller than that is not resolved by the test set."""
    return math.sqrt(max(lost + won - (won - lost) ** 2 / images, 0.0)) / images


def mcnemar_p(lost: int, won: int) -> float:
    """McNemar's exact two-sided p: the chance, were losing and winning an image equally likely,
    of a split of the lost + won changed images at least as uneven as this one."""
    changed = lost + won
    tail = sum(math.comb(changed, k) for k in range(min(lost, won) + 1)) / 2**changed
    return min(1.0, 2 * tail)


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
