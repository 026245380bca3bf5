"""The pipeline from a source to batches: `load`, and what callers ask about it besides.

`load` checks the settings, takes a split from its source, decodes, crops and augments every
image, normalizes it with the mean/std below, batches, and mixes batches (mixup/cutmix).
`num_examples`, `preprocessing_metadata` and `sample_images` answer the other questions search,
retraining, export and calibration ask.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from cream_tf.config import DataConfig
from cream_tf.data import augment, sources

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Measured on the 60,000 Fashion-MNIST training images scaled to [0, 1]: 0.28604 and 0.35302.
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
# tf.image.rgb_to_grayscale's weights, so RGB statistics follow an image converted to grayscale.
_LUMA = (0.2989, 0.5870, 0.1140)


def load(
    config: DataConfig,
    split: str,
    *,
    training: bool,
    batch_size: int | None = None,
    repeat: bool = False,
    seed: int | None = None,
) -> tf.data.Dataset:
    """Batches of (images, labels) of `split`; see the package docstring for their form.

    Args:
      training: shuffle and augment (config.augment, random_erasing, mixup/cutmix) and drop the
        last partial batch; False gives the same images in the same order on every pass.
      batch_size: defaults to config.batch_size.
      repeat: repeat forever (each pass reshuffled when training).
      seed: shuffle order and augmentation draws; None draws new ones every run. Under op
        determinism (TrainConfig.deterministic) the same seed and TensorFlow global seed give the
        same batches in any process, whatever ran before (this is how a resumed epoch sees the
        batches it would have seen). It does not change which images are held out (config.seed does).
    """
    config.validate(split)
    batch_size = config.batch_size if batch_size is None else batch_size
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1.")
    source = sources.source(config, split, shuffle=training, seed=seed)
    dataset = source.examples.repeat() if repeat else source.examples
    dataset = dataset.map(_seeded(_preprocessor(config, source, training), seed), num_parallel_calls=tf.data.AUTOTUNE)
    # A fixed batch dimension while training keeps TPUs and XLA to one compiled step.
    dataset = dataset.batch(batch_size, drop_remainder=training, num_parallel_calls=tf.data.AUTOTUNE)
    if training and (config.mixup_alpha > 0 or config.cutmix_alpha > 0):
        dataset = dataset.map(
            _seeded(augment.mixup_and_cutmix(config), seed + 1 if seed is not None else None),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return dataset.prefetch(tf.data.AUTOTUNE)


def num_examples(config: DataConfig, split: str) -> int:
    """Images in `split`, from listings and record headers; a folder's images are decode-checked
    once per process so that only readable ones count."""
    config.validate(split)
    return sources.example_count(config, split)


def config_for_entry(config: DataConfig, preprocessing: dict | None) -> DataConfig:
    """`config` with the input size, channels, mean and std an entry's metadata.json records
    (what `preprocessing_metadata` wrote), so an entry is measured as it was exported."""
    if not preprocessing:
        return config
    return dataclasses.replace(
        config,
        image_size=int(preprocessing.get("input_size", config.image_size)),
        channels=1 if preprocessing.get("color") == "grayscale" else 3 if "color" in preprocessing else config.channels,
        mean=tuple(preprocessing.get("mean", config.mean)),
        std=tuple(preprocessing.get("std", config.std)),
    )


def preprocessing_metadata(config: DataConfig) -> dict:
    """How evaluation prepares an image, as an exported model's metadata.json records it."""
    config.validate()
    mean, std = _mean_std(config)
    size = config.image_size
    metadata = {
        "color": "grayscale" if config.channels == 1 else "RGB",
        "scale": "x / 255",
        "mean": list(mean),
        "std": list(std),
        "normalize": "(x - mean) / std",
        "input_size": size,
        "interpolation": "bilinear, antialiased",
    }
    if config.name == "fashion_mnist":
        metadata["eval_resize"] = "none" if size == 28 else "resize to input_size x input_size (bilinear)"
    else:
        metadata.update(
            eval_resize="resize shorter side to input_size / 0.875 (bilinear), center crop input_size",
            crop_fraction=augment.CROP_FRACTION,
            resize_shorter_side=round(size / augment.CROP_FRACTION),
        )
    return metadata


def sample_images(config: DataConfig, split: str, count: int) -> np.ndarray:
    """`count` eval-mode images of `split`, spread over it by config.seed (always the same ones).

    For int8 TFLite calibration and BatchNorm recalibration: float32 [count, S, S, C].
    """
    config.validate(split)
    available = num_examples(config, split)
    if not 1 <= count <= available:
        raise ValueError(
            f"count={count} images asked of split {split!r}, which holds {available}; valid counts are 1..{available}."
        )
    # Folders list images class by class, so the first `count` would be a single class.
    source = sources.source(config, split, shuffle=True, seed=config.seed)
    dataset = source.examples.take(count).map(
        _preprocessor(config, source, training=False), num_parallel_calls=tf.data.AUTOTUNE
    )
    images, _ = next(iter(dataset.batch(count)))
    return images.numpy()


def to_pixels(images: np.ndarray, mean, std) -> np.ndarray:
    """Normalized images back to the pixel values 0..255 they came from (float32, rounded):
    what a camera hands a model whose normalization is inside it."""
    pixels = (np.asarray(images, np.float32) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)) * 255.0
    return np.clip(np.round(pixels), 0.0, 255.0).astype(np.float32)


def _mean_std(config: DataConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    fashion = config.name == "fashion_mnist"
    mean, std = (FASHION_MNIST_MEAN, FASHION_MNIST_STD) if fashion else (IMAGENET_MEAN, IMAGENET_STD)
    if len(mean) != config.channels:
        # RGB from grayscale repeats the statistics. Grayscale from RGB takes their luma: exact
        # for the mean, for the std only with perfectly correlated channels (close in photos).
        mean, std = (
            (tuple(mean) * 3, tuple(std) * 3)
            if config.channels == 3
            else ((float(np.dot(_LUMA, mean)),), (float(np.dot(_LUMA, std)),))
        )
    return tuple(config.mean) or mean, tuple(config.std) or std


def _preprocessor(config: DataConfig, source: sources.Source, training: bool) -> Callable:
    """Raw element -> (normalized float32 image [S, S, C], int32 label), augmented if training."""
    augmenting = training and config.augment != "none"
    mean, std = _mean_std(config)
    size = config.image_size
    randaugment = augment.randaugment(config) if augmenting and config.augment == "randaugment" else None
    erasing = augment.random_erasing(config.random_erasing) if training and config.random_erasing > 0 else None

    def prepare(*raw):
        image, label = source.decode(*raw)
        image = tf.cast(image, tf.float32)
        image = augment.crop_and_flip(image, size, small_images=source.small_images, random=augmenting)
        image = _match_channels(image, config.channels)
        if randaugment is not None:
            image = augment.on_rgb(randaugment.distort, image)  # works on 0..255 pixel values
        image = (image / 255.0 - mean) / std
        if erasing is not None:
            image = augment.on_rgb(erasing.distort, image)  # per-pixel N(0, 1) fill, as in timm: after normalizing
        return tf.ensure_shape(image, [size, size, config.channels]), tf.cast(label, tf.int32)

    return prepare


def _seeded(function: Callable, seed: int | None) -> Callable:
    """`function` with its random ops seeded from `seed`, for a map over a dataset.

    The random ops of a traced function draw their seeds from the graph's seed and their order in
    the graph, so setting the graph's seed while tracing fixes every draw. (Setting TensorFlow's
    global seed instead would also work, but it empties the runtime's cache of instantiated
    functions: every traced training step then pays tens of seconds to be rebuilt.)
    """
    if seed is None:
        return function

    def seeded(*args):
        tf.compat.v1.set_random_seed(seed)  # inside the trace: sets this graph's seed only
        return function(*args)

    return seeded


def _match_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
    if image.shape[-1] == channels:
        return image
    return tf.image.rgb_to_grayscale(image) if channels == 1 else tf.image.grayscale_to_rgb(image)
