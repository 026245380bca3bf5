"""The input pipeline that search, retraining and evaluation share: `load(config, split, ...)`.

Sources (`DataConfig.name`):

    fashion_mnist  the four idx .gz files from data_dir, then Debian's dataset-fashion-mnist
                   (/usr/share/datasets/fashion-mnist), then the Keras cache
    folder         data_dir/train/<class>/*.jpg|png|... and data_dir/val/<class>/...; classes sorted
    tfrecord       ImageNet-format TFRecords data_dir/train* and data_dir/val* ('image/encoded',
                   'image/class/label'; see `label_offset` for the classic 1-based labels)
    tfds           the prepared TFDS dataset `tfds_name` under data_dir; never downloads

Splits: 'train' is the training split minus `validation_size` held-out images, 'validation' those
held-out images (a fixed choice by `config.seed`), 'train_full' the whole training split and
'test' the official test split (ImageNet: its validation set).

Elements are (images, labels): images float32 [B, S, S, C] scaled to [0, 1] and normalized with
mean/std; labels int32 [B] class ids. With mixup or cutmix on and training=True, labels are
float32 [B, num_classes] soft labels summing to 1 instead: use a categorical loss (label
smoothing belongs to the loss, not here).

Distribution: `load` never shards. On one machine hand the global batch to
`strategy.experimental_distribute_dataset(load(config, "train", training=True, repeat=True))`; it
splits every batch over the replicas. With several workers use
`strategy.distribute_datasets_from_function`, each worker building
`load(config, "train", training=True, repeat=True,
batch_size=ctx.get_per_replica_batch_size(config.batch_size), seed=seed + ctx.input_pipeline_id)`,
so every worker shuffles the whole split in its own order (equal seeds would feed identical
batches to every worker).

Example:

    >>> from cream_tf import data
    >>> from cream_tf.config import DataConfig
    >>> config = DataConfig()                          # Fashion-MNIST, 28x28 grayscale
    >>> data.num_examples(config, "train")
    55000
    >>> images, labels = next(iter(data.load(config, "test", training=False)))
    >>> images.shape, labels.dtype
    (TensorShape([128, 28, 28, 1]), tf.int32)
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import struct
from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf
from absl import logging
from official.vision.dataloaders import classification_input
from official.vision.ops import augment as augment_ops

from cream_tf.config import DataConfig

SOURCES = ("fashion_mnist", "folder", "tfrecord", "tfds")
SPLITS = ("train", "validation", "test", "train_full")
AUGMENTS = ("none", "basic", "randaugment")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Measured on the 60,000 Fashion-MNIST training images scaled to [0, 1]: 0.28604 and 0.35302.
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
# tf.image.rgb_to_grayscale's weights, so RGB statistics follow an image converted to grayscale.
_LUMA = (0.2989, 0.5870, 0.1140)

CROP_FRACTION = 0.875  # evaluation center crop, as a fraction of the resized shorter side
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist", "~/.keras/datasets/fashion-mnist")
_FASHION_MNIST_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
_RECORD_SHUFFLE_BUFFER = 10_000  # as Model Garden's ImageNet recipe; about 1 GB of ImageNet JPEGs
_UNREADABLE_NAMED_AT_MOST = 20  # files named one by one before the warning only counts them


@dataclasses.dataclass(frozen=True)
class _Source:
    examples: tf.data.Dataset  # raw elements of one split, in a fixed or shuffled order
    decode: Callable  # raw element -> (uint8 image [h, w, c], int32 label)
    small_images: bool  # Fashion-MNIST-style pad-and-crop instead of ImageNet-style crops


def load(config: DataConfig, split: str, *, training: bool, batch_size: int | None = None,
         repeat: bool = False, seed: int | None = None) -> tf.data.Dataset:
    """Batches of (images, labels) of `split`; see the module docstring for their form.

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
    _check(config, split)
    batch_size = config.batch_size if batch_size is None else batch_size
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1.")
    source = _source(config, split, shuffle=training, seed=seed)
    dataset = source.examples.repeat() if repeat else source.examples
    dataset = dataset.map(_seeded(_preprocessor(config, source, training), seed),
                          num_parallel_calls=tf.data.AUTOTUNE)
    # A fixed batch dimension while training keeps TPUs and XLA to one compiled step.
    dataset = dataset.batch(batch_size, drop_remainder=training, num_parallel_calls=tf.data.AUTOTUNE)
    if training and (config.mixup_alpha > 0 or config.cutmix_alpha > 0):
        dataset = dataset.map(_seeded(_mixer(config), seed + 1 if seed is not None else None),
                              num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def num_examples(config: DataConfig, split: str) -> int:
    """Images in `split`, from listings and record headers; a folder's images are decode-checked
    once per process (see _readable_images) so that only readable ones count."""
    _check(config, split)
    if config.name == "fashion_mnist":
        return len(_fashion_mnist_split(config, split, labels_only=True)[1])
    if config.name == "folder":
        return len(_folder_split(config, split)[0])
    if config.name == "tfrecord":
        return sum(take for _, _, take in _tfrecord_segments(config, split))
    return _tfds_split(config, split)[1]


def preprocessing_metadata(config: DataConfig) -> dict:
    """How evaluation prepares an image, as an exported model's metadata.json records it."""
    _check(config)
    mean, std = _mean_std(config)
    size = config.image_size
    metadata = {"color": "grayscale" if config.channels == 1 else "RGB", "scale": "x / 255",
                "mean": list(mean), "std": list(std), "normalize": "(x - mean) / std",
                "input_size": size, "interpolation": "bilinear, antialiased"}
    if config.name == "fashion_mnist":
        metadata["eval_resize"] = "none" if size == 28 else "resize to input_size x input_size (bilinear)"
    else:
        metadata.update(
            eval_resize="resize shorter side to input_size / 0.875 (bilinear), center crop input_size",
            crop_fraction=CROP_FRACTION, resize_shorter_side=round(size / CROP_FRACTION))
    return metadata


def sample_images(config: DataConfig, split: str, count: int) -> np.ndarray:
    """`count` eval-mode images of `split`, spread over it by config.seed (always the same ones).

    For int8 TFLite calibration and BatchNorm recalibration: float32 [count, S, S, C].
    """
    _check(config, split)
    available = num_examples(config, split)
    if not 1 <= count <= available:
        raise ValueError(f"count={count} images asked of split {split!r}, which holds {available}; "
                         f"valid counts are 1..{available}.")
    # Folders list images class by class, so the first `count` would be a single class.
    source = _source(config, split, shuffle=True, seed=config.seed)
    dataset = source.examples.take(count).map(_preprocessor(config, source, training=False),
                                             num_parallel_calls=tf.data.AUTOTUNE)
    images, _ = next(iter(dataset.batch(count)))
    return images.numpy()


# ---------------------------------------------------------------------------------------------
# Checks


def _check(config: DataConfig, split: str | None = None) -> None:
    def bad(key, value, valid):
        raise ValueError(f"data.{key}={value!r} is not valid; valid: {valid}.")

    if config.name not in SOURCES:
        bad("name", config.name, ", ".join(SOURCES))
    if split is not None and split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; valid splits are {', '.join(SPLITS)}.")
    if split == "validation" and config.validation_size == 0:
        raise ValueError("The validation split is empty: data.validation_size=0 holds nothing out; set it "
                         "to the number of training images to hold out.")
    if config.name in ("folder", "tfrecord") and not config.data_dir:
        bad("data_dir", config.data_dir, f"the root folder of the {config.name} dataset")
    if config.name == "tfds" and not config.tfds_name:
        bad("tfds_name", config.tfds_name, "a TFDS dataset name such as 'imagenette/320px-v2'")
    if config.channels not in (1, 3):
        bad("channels", config.channels, "1 (grayscale) or 3 (RGB)")
    if config.image_size < 1:
        bad("image_size", config.image_size, "a positive number of pixels")
    if config.num_classes < 1:
        bad("num_classes", config.num_classes, "at least 1")
    if config.validation_size < 0:
        bad("validation_size", config.validation_size, "0 or more images")
    for key in ("mean", "std"):
        if len(getattr(config, key)) not in (0, config.channels):
            bad(key, getattr(config, key), f"empty (the dataset's default) or {config.channels} "
                                           f"value(s), one per channel (channels={config.channels})")
    if any(s <= 0 for s in config.std):
        bad("std", config.std, "positive values")
    if config.augment not in AUGMENTS:
        bad("augment", config.augment, ", ".join(AUGMENTS))
    if config.randaugment_layers < 1:
        bad("randaugment_layers", config.randaugment_layers, "1 or more")
    if not 0 <= config.randaugment_magnitude <= 10:
        bad("randaugment_magnitude", config.randaugment_magnitude, "0..10")
    if config.randaugment_magnitude_std < 0:
        bad("randaugment_magnitude_std", config.randaugment_magnitude_std, "0 or more")
    if not 0 <= config.random_erasing <= 1:
        bad("random_erasing", config.random_erasing, "a probability in 0..1")
    for key in ("mixup_alpha", "cutmix_alpha"):
        if getattr(config, key) < 0:
            bad(key, getattr(config, key), "0 (off) or a positive Beta distribution parameter")


def _checked_labels(labels: np.ndarray, config: DataConfig, where: str) -> np.ndarray:
    if len(labels) and not (labels.min() >= 0 and labels.max() < config.num_classes):
        raise ValueError(f"{where} has labels {labels.min()}..{labels.max()}, outside 0..{config.num_classes - 1} "
                         f"allowed by data.num_classes={config.num_classes}; set data.num_classes to "
                         f"{labels.max() + 1}.")
    return labels


def _checked_label(label: tf.Tensor, config: DataConfig, where: str) -> tf.Tensor:
    """In-graph range check for sources whose labels are only seen while reading."""
    label = tf.cast(label, tf.int32)
    in_range = tf.logical_and(label >= 0, label < config.num_classes)
    check = tf.debugging.Assert(in_range, [
        f"{where}: label out of range; valid labels are 0..{config.num_classes - 1} "
        f"(data.num_classes={config.num_classes}, data.label_offset={config.label_offset}). Label:",
        label])
    with tf.control_dependencies([check]):
        return tf.identity(label)


# ---------------------------------------------------------------------------------------------
# Sources


def _source(config: DataConfig, split: str, *, shuffle: bool, seed: int | None) -> _Source:
    if config.name == "fashion_mnist":
        images, labels = _fashion_mnist_split(config, split)
        examples = _shuffled(tf.data.Dataset.from_tensor_slices((images, labels)), len(labels), shuffle, seed)
        return _Source(examples, lambda image, label: (image, label), small_images=True)

    if config.name == "folder":
        paths, labels = _folder_split(config, split)
        examples = _shuffled(tf.data.Dataset.from_tensor_slices((list(paths), labels)), len(paths), shuffle, seed)
        return _Source(examples, lambda path, label: (_decode_bytes(tf.io.read_file(path)), label),
                       small_images=False)

    if config.name == "tfrecord":
        files, skips, takes = zip(*_tfrecord_segments(config, split))
        table = tf.data.Dataset.from_tensor_slices((list(files), np.int64(skips), np.int64(takes)))
        segments = _shuffled(table, len(files), shuffle, seed)  # whole files first: cheap and wide
        examples = segments.interleave(
            lambda file, skip, take: tf.data.TFRecordDataset(file).skip(skip).take(take),
            cycle_length=min(16, len(files)), num_parallel_calls=tf.data.AUTOTUNE)
        examples = _shuffled(examples, _RECORD_SHUFFLE_BUFFER, shuffle, seed)
        # tf-models-official's classification decoder works on TF 2.20 (a parse_single_example of
        # the two features); its tf_example_decoder is the detection one and wants box features.
        decoder = classification_input.Decoder()

        def decode(serialized):
            parsed = decoder.decode(serialized)
            label = parsed[classification_input.DEFAULT_LABEL_FIELD_KEY] + config.label_offset
            return (_decode_bytes(parsed[classification_input.DEFAULT_IMAGE_FIELD_KEY]),
                    _checked_label(label, config, f"TFRecords in {config.data_dir}"))
        return _Source(examples, decode, small_images=False)

    import tensorflow_datasets as tfds

    builder = _tfds_builder(config)
    image_key, _ = builder.info.supervised_keys
    encoded = isinstance(builder.info.features[image_key], tfds.features.Image)
    examples = builder.as_dataset(
        split=_tfds_split(config, split)[0], shuffle_files=shuffle, as_supervised=True,
        decoders={image_key: tfds.decode.SkipDecoding()} if encoded else None,
        read_config=tfds.ReadConfig(shuffle_seed=seed))
    examples = _shuffled(examples, _RECORD_SHUFFLE_BUFFER, shuffle, seed)
    return _Source(examples, lambda image, label: (
        _decode_bytes(image) if encoded else image,
        _checked_label(label, config, f"TFDS {config.tfds_name}")), small_images=False)


def _shuffled(dataset: tf.data.Dataset, buffer: int, shuffle: bool, seed: int | None) -> tf.data.Dataset:
    return dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True) if shuffle else dataset


def _held_out(count: int, config: DataConfig) -> np.ndarray:
    """Which of `count` training images form the validation split: a mask fixed by config.seed."""
    _check_validation_size(count, config)
    mask = np.zeros(count, bool)
    mask[np.random.default_rng(config.seed).permutation(count)[:config.validation_size]] = True
    return mask


def _held_out_block(count: int, config: DataConfig) -> tuple[int, int]:
    """For record streams: a run of validation_size consecutive records at an offset fixed by
    config.seed. ImageNet's and TFDS's shards are shuffled when written, so a run is a random
    sample, and reading it costs validation_size records instead of a pass over the split."""
    _check_validation_size(count, config)
    start = int(np.random.default_rng(config.seed).integers(0, count - config.validation_size + 1))
    return start, start + config.validation_size


def _check_validation_size(count: int, config: DataConfig) -> None:
    if config.validation_size >= count:
        raise ValueError(f"data.validation_size={config.validation_size} must be smaller than the "
                         f"{count} images of the training split.")


def _pick(split: str, mask: np.ndarray) -> np.ndarray:
    if split == "validation":
        return np.flatnonzero(mask)
    return np.flatnonzero(~mask) if split == "train" else np.arange(len(mask))


# Fashion-MNIST


def _fashion_mnist_split(config: DataConfig, split: str, labels_only: bool = False):
    directory = str(_fashion_mnist_dir(config))
    part = "test" if split == "test" else "train"
    labels = _checked_labels(_read_idx(directory, _FASHION_MNIST_FILES[part][1]).astype(np.int32), config,
                             f"Fashion-MNIST ({directory})")
    images = None if labels_only else _read_idx(directory, _FASHION_MNIST_FILES[part][0])[..., None]
    if part == "train":
        chosen = _pick(split, _held_out(len(labels), config))
        labels = labels[chosen]
        images = None if labels_only else images[chosen]
    return images, labels


def _fashion_mnist_dir(config: DataConfig) -> Path:
    candidates = ([config.data_dir] if config.data_dir else []) + list(FASHION_MNIST_DIRS)
    for candidate in candidates:
        directory = Path(candidate).expanduser()
        if all((directory / name).is_file() for pair in _FASHION_MNIST_FILES.values() for name in pair):
            if config.data_dir and candidate != config.data_dir:
                logging.warning("data.data_dir=%r holds no Fashion-MNIST files; using %s.",
                                config.data_dir, directory)
            return directory
    files = ", ".join(name for pair in _FASHION_MNIST_FILES.values() for name in pair)
    raise FileNotFoundError(
        f"Fashion-MNIST not found: none of {', '.join(map(repr, candidates))} holds {files}. "
        "Install it with `sudo apt-get install dataset-fashion-mnist` (puts them in "
        "/usr/share/datasets/fashion-mnist), or set data.data_dir to a folder holding them.")


@functools.lru_cache(maxsize=8)
def _read_idx(directory: str, name: str) -> np.ndarray:
    """An idx file (the MNIST format): magic 0x0000080N, N big-endian dimensions, uint8 data."""
    with gzip.open(Path(directory) / name, "rb") as f:
        raw = f.read()
    magic, = struct.unpack(">I", raw[:4])
    rank = magic & 0xFF
    shape = struct.unpack(f">{rank}I", raw[4:4 + 4 * rank])
    if magic >> 8 != 0x08 or len(raw) != 4 + 4 * rank + int(np.prod(shape)):
        raise ValueError(f"{Path(directory) / name} is not a complete uint8 idx file (magic {magic:#x}, "
                         f"shape {shape}, {len(raw)} bytes); reinstall dataset-fashion-mnist.")
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * rank).reshape(shape).copy()


# Class-per-folder images


def _folder_split(config: DataConfig, split: str) -> tuple[tuple[str, ...], np.ndarray]:
    root = Path(config.data_dir)
    classes = _class_names(root / "train")
    if len(classes) != config.num_classes:
        raise ValueError(f"{root / 'train'} has {len(classes)} class folders but data.num_classes="
                         f"{config.num_classes}; the two must match (set data.num_classes={len(classes)}).")
    if split == "test":
        extra = sorted(set(_class_names(root / "val")) - set(classes))
        if extra:
            raise ValueError(f"{root / 'val'} has class folders {extra} that {root / 'train'} lacks; "
                             f"valid class names are those under train: {', '.join(classes)}.")
        return _readable_images(str(root / "val"), classes)
    paths, labels = _readable_images(str(root / "train"), classes)
    chosen = _pick(split, _held_out(len(paths), config))
    return tuple(paths[i] for i in chosen), labels[chosen]


def _class_names(directory: Path) -> tuple[str, ...]:
    if not directory.is_dir():
        raise FileNotFoundError(f"Folder dataset: {directory} does not exist; expected "
                                f"{directory}/<class name>/<images> for every class.")
    return tuple(sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")))


@functools.lru_cache(maxsize=8)
def _readable_images(directory: str, classes: tuple[str, ...]) -> tuple[tuple[str, ...], np.ndarray]:
    """The images under directory/<class>/ that decode, with their labels.

    Every file is decoded once up front (then kept for the process), with the very decoder the
    pipeline uses, so a corrupt file is named here instead of failing an epoch half-way. tf.data's
    ignore_errors cannot say which element it dropped, so the probe carries each file's index and
    the indices that do not come back name the files.
    """
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (Path(directory) / name).iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        paths += [str(p) for p in files]
        labels += [label] * len(files)
    readable = np.zeros(len(paths), bool)
    if paths:
        probe = tf.data.Dataset.from_tensor_slices(paths).enumerate().map(
            lambda i, path: (i, tf.reduce_max(_decode_bytes(tf.io.read_file(path)))),
            num_parallel_calls=tf.data.AUTOTUNE).ignore_errors().map(lambda i, _: i).batch(4096)
        for indices in probe:
            readable[indices.numpy()] = True
    unreadable = [p for p, ok in zip(paths, readable) if not ok]
    for path in unreadable[:_UNREADABLE_NAMED_AT_MOST]:
        logging.warning("Skipping unreadable image %s: it cannot be read or decoded as %s.",
                        path, "/".join(e[1:].upper() for e in IMAGE_EXTENSIONS))
    if unreadable:
        logging.warning("Skipped %d of %d images under %s that cannot be read or decoded%s.",
                        len(unreadable), len(paths), directory,
                        f" (the first {_UNREADABLE_NAMED_AT_MOST} named above)"
                        if len(unreadable) > _UNREADABLE_NAMED_AT_MOST else "")
    return tuple(p for p, ok in zip(paths, readable) if ok), np.asarray(labels, np.int32)[readable]


def _decode_bytes(data: tf.Tensor) -> tf.Tensor:
    # Always 3 channels: handles grayscale, RGBA, palette PNGs and GIFs alike; _match_channels
    # converts to the configured channels afterwards.
    return tf.io.decode_image(data, channels=3, expand_animations=False)


# TFRecords


def _tfrecord_segments(config: DataConfig, split: str) -> list[tuple[str, int, int]]:
    """(file, records to skip, records to take) covering `split`, files in sorted order."""
    prefix = "val" if split == "test" else "train"
    files = sorted(str(p) for p in Path(config.data_dir).glob(f"{prefix}*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"No TFRecord files {config.data_dir}/{prefix}* ('train-00000-of-01024', "
                                f"'validation-00000-of-00128', ...) for split {split!r}.")
    counts = [_count_records(f) for f in files]
    total = sum(counts)
    if split in ("train", "validation"):
        start, stop = _held_out_block(total, config)
        ranges = [(start, stop)] if split == "validation" else [(0, start), (stop, total)]
    else:
        ranges = [(0, total)]
    segments, base = [], 0
    for file, count in zip(files, counts):
        for low, high in ranges:
            first, last = max(low, base), min(high, base + count)
            if first < last:
                segments.append((file, first - base, last - first))
        base += count
    return segments


@functools.lru_cache(maxsize=None)
def _count_records(path: str) -> int:
    """Records in an uncompressed TFRecord file, by hopping from header to header.

    Reads 8 bytes per record instead of the whole file (a record is: uint64 length, uint32 crc,
    data, uint32 crc).
    """
    count, position = 0, 0
    with tf.io.gfile.GFile(path, "rb") as f:
        size = f.size()
        while position + 12 <= size:
            f.seek(position)
            length, = struct.unpack("<Q", f.read(8))
            position += 12 + length + 4
            count += 1
    if position != size:
        raise ValueError(f"{path} is not an uncompressed TFRecord file (record lengths do not add up to "
                         f"its {size} bytes); valid are TFRecords as ImageNet's build scripts write them.")
    return count


# TFDS


def _tfds_builder(config: DataConfig):
    builder = _prepared_tfds_builder(config.tfds_name, config.data_dir)
    classes = getattr(builder.info.features[builder.info.supervised_keys[1]], "num_classes", None)
    if classes is not None and classes != config.num_classes:
        raise ValueError(f"TFDS dataset {config.tfds_name!r} has {classes} classes but data.num_classes="
                         f"{config.num_classes}; set data.num_classes={classes}.")
    return builder


@functools.lru_cache(maxsize=4)
def _prepared_tfds_builder(name: str, data_dir: str):
    import tensorflow_datasets as tfds  # only this source needs it, and it is slow to import

    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
    except tfds.core.DatasetNotFoundError as error:
        raise ValueError(f"data.tfds_name={name!r} is not a TFDS dataset: {error}") from error
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"TFDS dataset {name!r} is not prepared in {builder.data_dir}, and cream_tf never downloads "
            f"at run time. Prepare it once where there is network access (`tfds build {name} "
            "--data_dir=DIR`), then set data.data_dir=DIR.")
    if builder.info.supervised_keys is None:
        raise ValueError(f"TFDS dataset {name!r} has no (image, label) supervised keys; valid are image "
                         "classification datasets.")
    return builder


def _tfds_split(config: DataConfig, split: str) -> tuple[str, int]:
    """The TFDS split string for `split` and its size."""
    splits = _tfds_builder(config).info.splits
    if split == "test":
        name = next((n for n in ("test", "validation") if n in splits), None)
        if name is None:
            raise ValueError(f"TFDS dataset {config.tfds_name!r} has no 'test' or 'validation' split "
                             f"(it has {', '.join(splits)}).")
        return name, splits[name].num_examples
    total = splits["train"].num_examples
    if split == "train_full":
        return "train", total
    start, stop = _held_out_block(total, config)
    if split == "validation":
        return f"train[{start}:{stop}]", stop - start
    parts = [p for p, size in ((f"train[:{start}]", start), (f"train[{stop}:]", total - stop)) if size]
    return "+".join(parts), total - (stop - start)


# ---------------------------------------------------------------------------------------------
# Preprocessing and augmentation


def _mean_std(config: DataConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    fashion = config.name == "fashion_mnist"
    mean, std = (FASHION_MNIST_MEAN, FASHION_MNIST_STD) if fashion else (IMAGENET_MEAN, IMAGENET_STD)
    if len(mean) != config.channels:
        # RGB from grayscale repeats the statistics. Grayscale from RGB takes their luma: exact
        # for the mean, for the std only with perfectly correlated channels (close in photos).
        mean, std = ((tuple(mean) * 3, tuple(std) * 3) if config.channels == 3 else
                     ((float(np.dot(_LUMA, mean)),), (float(np.dot(_LUMA, std)),)))
    return tuple(config.mean) or mean, tuple(config.std) or std


def _preprocessor(config: DataConfig, source: _Source, training: bool) -> Callable:
    augment = config.augment if training else "none"
    mean, std = _mean_std(config)
    size = config.image_size
    randaugment = _randaugment(config) if augment == "randaugment" else None
    erasing = (augment_ops.RandomErasing(probability=config.random_erasing)
               if training and config.random_erasing > 0 else None)

    def prepare(*raw):
        image, label = source.decode(*raw)
        image = tf.cast(image, tf.float32)
        if source.small_images:
            image = _pad_and_crop(image, size, random=augment != "none")
        elif augment != "none":
            image = _random_resized_crop(image, size)
        else:
            image = _resize_and_center_crop(image, size)
        if augment != "none":
            image = tf.image.random_flip_left_right(image)
        image = _match_channels(image, config.channels)
        if randaugment is not None:
            image = _on_rgb(randaugment.distort, image)  # works on 0..255 pixel values
        image = (image / 255.0 - mean) / std
        if erasing is not None:
            image = _on_rgb(erasing.distort, image)  # per-pixel N(0, 1) fill, as in timm: after normalizing
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


def _pad_and_crop(image: tf.Tensor, size: int, random: bool) -> tf.Tensor:
    """Fashion-MNIST: a random 2-pixel shift while training, then the network's size."""
    if random:
        image = tf.image.random_crop(tf.pad(image, [[2, 2], [2, 2], [0, 0]]), tf.shape(image))
    if image.shape[0] != size or image.shape[1] != size:
        image = tf.image.resize(image, [size, size], antialias=True)
    return image


def _random_resized_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    """Inception-style crop: 8%..100% of the area, aspect 3/4..4/3 (timm's defaults)."""
    # The stateless op with a seed drawn like any other random op: its stateful twin insists on
    # an explicit op seed under op determinism, which would fix the crops for every epoch.
    seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)
    begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([1, 0, 4]), seed, min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True)
    crop = tf.slice(image, begin, extent)
    crop.set_shape([None, None, image.shape[-1]])  # tf.slice forgets the channels
    return tf.image.resize(crop, [size, size], antialias=True)


def _resize_and_center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    """Shorter side to size / 0.875 (256 for 224), then the central size x size."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = round(size / CROP_FRACTION) / tf.reduce_min(shape)
    resized = tf.cast(tf.round(shape * scale), tf.int32)
    image = tf.image.resize(image, resized, antialias=True)
    top, left = (resized[0] - size) // 2, (resized[1] - size) // 2
    return image[top:top + size, left:left + size]


def _match_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
    if image.shape[-1] == channels:
        return image
    return tf.image.rgb_to_grayscale(image) if channels == 1 else tf.image.grayscale_to_rgb(image)


def _on_rgb(distort: Callable, image: tf.Tensor) -> tf.Tensor:
    """Model Garden's ops assume 3 channels (fill masks are tiled to 3); a grayscale image goes
    through as 3 equal channels and comes back as one."""
    if image.shape[-1] == 3:
        return distort(image)
    return distort(tf.tile(image, [1, 1, 3]))[..., :1]


def _randaugment(config: DataConfig) -> augment_ops.RandAugment:
    _make_integer_ops_graph_safe()
    scale = config.image_size / 224  # Model Garden's translate/cutout constants are pixels at 224
    return augment_ops.RandAugment(
        num_layers=config.randaugment_layers, magnitude=config.randaugment_magnitude,
        magnitude_std=config.randaugment_magnitude_std, translate_const=100 * scale, cutout_const=40 * scale,
        # timm's rand-m9-mstd0.5 policy, which the paper trained with, has no Cutout: random
        # erasing plays that part.
        exclude_ops=["Cutout"])


def _make_integer_ops_graph_safe() -> None:
    """Replaces Model Garden's Posterize, Solarize and SolarizeAdd with dtype-safe equivalents.

    With magnitude_std > 0 their integer argument is drawn per image, so inside a traced
    function (a tf.data map) it arrives as an int32 tensor, and the originals then mix it with
    the uint8 image: "Input 'y' of 'RightShift' Op has type int32 that does not match type uint8"
    (tf-models-official 2.20, TF 2.20). The replacements compute in int32 and return the image's
    dtype, so they give the originals' results for Python ints too; the rest of RandAugment is kept.
    """
    augment_ops.NAME_TO_FUNC.update(Posterize=_posterize, Solarize=_solarize, SolarizeAdd=_solarize_add)


def _posterize(image: tf.Tensor, bits) -> tf.Tensor:
    """Keeps the top `bits` bits of every pixel (PIL's posterize)."""
    shift = 8 - tf.clip_by_value(tf.cast(bits, tf.int32), 0, 8)
    pixels = tf.cast(image, tf.int32)
    return tf.cast(tf.bitwise.left_shift(tf.bitwise.right_shift(pixels, shift), shift), image.dtype)


def _solarize(image: tf.Tensor, threshold=128) -> tf.Tensor:
    """Inverts pixels at or above `threshold` (PIL's solarize)."""
    pixels = tf.cast(image, tf.int32)
    return tf.cast(tf.where(pixels < tf.cast(threshold, tf.int32), pixels, 255 - pixels), image.dtype)


def _solarize_add(image: tf.Tensor, addition=0, threshold=128) -> tf.Tensor:
    """Adds `addition` to pixels below `threshold`, clipped to 0..255."""
    pixels = tf.cast(image, tf.int32)
    added = tf.clip_by_value(pixels + tf.cast(addition, tf.int32), 0, 255)
    return tf.cast(tf.where(pixels < tf.cast(threshold, tf.int32), added, pixels), image.dtype)


def _mixer(config: DataConfig) -> Callable:
    """Mixup/cutmix on a batch; labels become float32 [B, num_classes] that sum to 1."""
    mix = augment_ops.MixupAndCutmix(num_classes=config.num_classes, mixup_alpha=config.mixup_alpha,
                                     cutmix_alpha=config.cutmix_alpha, label_smoothing=0.0)

    def apply(images, labels):
        batch_shape = images.shape
        if images.shape[-1] == 3:
            images, labels = mix(images, labels)
        else:  # the cutmix fill mask is tiled to 3 channels, as in _on_rgb
            images, labels = mix(tf.tile(images, [1, 1, 1, 3]), labels)
            images = images[..., :1]
        # tf.cond inside the mix forgets the batch size; keep it static for distributed steps.
        return (tf.ensure_shape(images, batch_shape),
                tf.ensure_shape(tf.cast(labels, tf.float32), [batch_shape[0], config.num_classes]))
    return apply
