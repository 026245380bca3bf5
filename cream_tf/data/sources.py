"""The four data sources: where the images of a split come from, and how one is decoded.

    fashion_mnist  the four idx .gz files from data_dir, then FASHION_MNIST_DIRS
                   (Debian's dataset-fashion-mnist in /usr/share/datasets/fashion-mnist, then the
                   Keras cache)
    folder         data_dir/train/<class>/*.jpg|png|... and data_dir/val/<class>/...; classes sorted
    tfrecord       ImageNet-format TFRecords data_dir/train* and data_dir/val* ('image/encoded',
                   'image/class/label'; see `label_offset` for the classic 1-based labels)
    tfds           the prepared TFDS dataset `tfds_name` under data_dir; never downloads

`source` gives a split's raw elements with their decoder, `example_count` its size. Labels are
checked against data.num_classes: up front where a listing holds them, in the graph otherwise.
Which training images form the validation split is `held_out`'s job.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf
from absl import logging

from cream_tf.config import DataConfig
from cream_tf.data import held_out

# Where the fashion_mnist source looks after data.data_dir, in order.
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist", "~/.keras/datasets/fashion-mnist")
_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
_RECORD_SHUFFLE_BUFFER = 10_000  # as Model Garden's ImageNet recipe; about 1 GB of ImageNet JPEGs
_UNREADABLE_NAMED_AT_MOST = 20  # files named one by one before the warning only counts them


@dataclasses.dataclass(frozen=True)
class Source:
    examples: tf.data.Dataset  # raw elements of one split, in a fixed or shuffled order
    decode: Callable  # raw element -> (uint8 image [h, w, c], int32 label)
    small_images: bool  # Fashion-MNIST-style pad-and-crop instead of ImageNet-style crops


def source(config: DataConfig, split: str, *, shuffle: bool, seed: int | None) -> Source:
    """The raw elements of `split` (shuffled by `seed` when `shuffle`) and how to decode one."""
    if config.name == "fashion_mnist":
        images, labels = fashion_mnist_split(config, split)
        examples = _shuffled(tf.data.Dataset.from_tensor_slices((images, labels)), len(labels), shuffle, seed)
        return Source(examples, lambda image, label: (image, label), small_images=True)

    if config.name == "folder":
        paths, labels = _folder_split(config, split)
        examples = _shuffled(tf.data.Dataset.from_tensor_slices((list(paths), labels)), len(paths), shuffle, seed)
        return Source(examples, lambda path, label: (_decode_bytes(tf.io.read_file(path)), label), small_images=False)

    if config.name == "tfrecord":
        files, skips, takes = zip(*_tfrecord_segments(config, split))
        table = tf.data.Dataset.from_tensor_slices((list(files), np.int64(skips), np.int64(takes)))
        segments = _shuffled(table, len(files), shuffle, seed)  # whole files first: cheap and wide
        examples = segments.interleave(
            lambda file, skip, take: tf.data.TFRecordDataset(file).skip(skip).take(take),
            cycle_length=min(16, len(files)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        examples = _shuffled(examples, _RECORD_SHUFFLE_BUFFER, shuffle, seed)
        # tf-models-official's classification decoder works on TF 2.20 (a parse_single_example of
        # the two features); its tf_example_decoder is the detection one and wants box features.
        # Imported here: importing official.vision costs about a second of CPU other sources never need.
        from official.vision.dataloaders import classification_input

        decoder = classification_input.Decoder()

        def decode(serialized):
            parsed = decoder.decode(serialized)
            label = parsed[classification_input.DEFAULT_LABEL_FIELD_KEY] + config.label_offset
            return (
                _decode_bytes(parsed[classification_input.DEFAULT_IMAGE_FIELD_KEY]),
                _checked_label(label, config, f"TFRecords in {config.data_dir}"),
            )

        return Source(examples, decode, small_images=False)

    import tensorflow_datasets as tfds

    builder = _tfds_builder(config)
    image_key, _ = builder.info.supervised_keys
    encoded = isinstance(builder.info.features[image_key], tfds.features.Image)
    examples = builder.as_dataset(
        split=_tfds_split(config, split)[0],
        shuffle_files=shuffle,
        as_supervised=True,
        decoders={image_key: tfds.decode.SkipDecoding()} if encoded else None,
        read_config=tfds.ReadConfig(shuffle_seed=seed),
    )
    examples = _shuffled(examples, _RECORD_SHUFFLE_BUFFER, shuffle, seed)
    return Source(
        examples,
        lambda image, label: (
            _decode_bytes(image) if encoded else image,
            _checked_label(label, config, f"TFDS {config.tfds_name}"),
        ),
        small_images=False,
    )


def example_count(config: DataConfig, split: str) -> int:
    """Images in `split`, from listings and record headers; a folder's images are decode-checked
    once per process (see _readable_images) so that only readable ones count."""
    if config.name == "fashion_mnist":
        return len(fashion_mnist_split(config, split, labels_only=True)[1])
    if config.name == "folder":
        return len(_folder_split(config, split)[0])
    if config.name == "tfrecord":
        return sum(take for _, _, take in _tfrecord_segments(config, split))
    return _tfds_split(config, split)[1]


def _shuffled(dataset: tf.data.Dataset, buffer: int, shuffle: bool, seed: int | None) -> tf.data.Dataset:
    return dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True) if shuffle else dataset


def _checked_labels(labels: np.ndarray, config: DataConfig, where: str) -> np.ndarray:
    if len(labels) and not (labels.min() >= 0 and labels.max() < config.num_classes):
        raise ValueError(
            f"{where} has labels {labels.min()}..{labels.max()}, outside 0..{config.num_classes - 1} "
            f"allowed by data.num_classes={config.num_classes}; set data.num_classes to "
            f"{labels.max() + 1}."
        )
    return labels


def _checked_label(label: tf.Tensor, config: DataConfig, where: str) -> tf.Tensor:
    """In-graph range check for sources whose labels are only seen while reading."""
    label = tf.cast(label, tf.int32)
    in_range = tf.logical_and(label >= 0, label < config.num_classes)
    check = tf.debugging.Assert(
        in_range,
        [
            f"{where}: label out of range; valid labels are 0..{config.num_classes - 1} "
            f"(data.num_classes={config.num_classes}, data.label_offset={config.label_offset}). Label:",
            label,
        ],
    )
    with tf.control_dependencies([check]):
        return tf.identity(label)


# Fashion-MNIST


def fashion_mnist_split(config: DataConfig, split: str, labels_only: bool = False):
    """(images uint8 [N, 28, 28, 1] or None with `labels_only`, labels int32 [N]) of a split: test
    is the test file; the others are the training file's part that config's held-out rule gives."""
    directory = str(fashion_mnist_dir(config))
    part = "test" if split == "test" else "train"
    labels = _checked_labels(
        read_idx(directory, _FASHION_MNIST_FILES[part][1]).astype(np.int32), config, f"Fashion-MNIST ({directory})"
    )
    images = None if labels_only else read_idx(directory, _FASHION_MNIST_FILES[part][0])[..., None]
    if part == "train":
        chosen = held_out.pick(split, held_out.mask(len(labels), config))
        labels = labels[chosen]
        images = None if labels_only else images[chosen]
    return images, labels


def fashion_mnist_dir(config: DataConfig) -> Path:
    """The first of data.data_dir and FASHION_MNIST_DIRS that holds all four files."""
    candidates = ([config.data_dir] if config.data_dir else []) + list(FASHION_MNIST_DIRS)
    for candidate in candidates:
        directory = Path(candidate).expanduser()
        if all((directory / name).is_file() for pair in _FASHION_MNIST_FILES.values() for name in pair):
            if config.data_dir and candidate != config.data_dir:
                logging.warning("data.data_dir=%r holds no Fashion-MNIST files; using %s.", config.data_dir, directory)
            return directory
    files = ", ".join(name for pair in _FASHION_MNIST_FILES.values() for name in pair)
    raise FileNotFoundError(
        f"Fashion-MNIST not found: none of {', '.join(map(repr, candidates))} holds {files}. "
        "Install it with `sudo apt-get install dataset-fashion-mnist` (puts them in "
        "/usr/share/datasets/fashion-mnist), or set data.data_dir to a folder holding them."
    )


@functools.lru_cache(maxsize=8)
def read_idx(directory: str, name: str) -> np.ndarray:
    """An idx file (the MNIST format): magic 0x0000080N, N big-endian dimensions, uint8 data."""
    with gzip.open(Path(directory) / name, "rb") as f:
        raw = f.read()
    (magic,) = struct.unpack(">I", raw[:4])
    rank = magic & 0xFF
    shape = struct.unpack(f">{rank}I", raw[4 : 4 + 4 * rank])
    if magic >> 8 != 0x08 or len(raw) != 4 + 4 * rank + int(np.prod(shape)):
        raise ValueError(
            f"{Path(directory) / name} is not a complete uint8 idx file (magic {magic:#x}, "
            f"shape {shape}, {len(raw)} bytes); reinstall dataset-fashion-mnist."
        )
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * rank).reshape(shape).copy()


# Class names


# The dataset's own names, in label order (zalandoresearch/fashion-mnist, README "Labels").
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def class_names(config: DataConfig) -> tuple[str, ...] | None:
    """The name of every class, in label order, where the source knows them: Fashion-MNIST's,
    a folder dataset's class folders, a TFDS dataset's label names; None for TFRecords."""
    if config.name == "fashion_mnist":
        return FASHION_MNIST_CLASSES
    if config.name == "folder":
        return _class_names(Path(config.data_dir) / "train")
    if config.name == "tfds":
        builder = _tfds_builder(config)
        names = getattr(builder.info.features[builder.info.supervised_keys[1]], "names", None)
        return tuple(names) if names else None
    return None


# Class-per-folder images


def _folder_split(config: DataConfig, split: str) -> tuple[tuple[str, ...], np.ndarray]:
    root = Path(config.data_dir)
    classes = _class_names(root / "train")
    if len(classes) != config.num_classes:
        raise ValueError(
            f"{root / 'train'} has {len(classes)} class folders but data.num_classes="
            f"{config.num_classes}; the two must match (set data.num_classes={len(classes)})."
        )
    if split == "test":
        extra = sorted(set(_class_names(root / "val")) - set(classes))
        if extra:
            raise ValueError(
                f"{root / 'val'} has class folders {extra} that {root / 'train'} lacks; "
                f"valid class names are those under train: {', '.join(classes)}."
            )
        return _readable_images(str(root / "val"), classes)
    paths, labels = _readable_images(str(root / "train"), classes)
    chosen = held_out.pick(split, held_out.mask(len(paths), config))
    return tuple(paths[i] for i in chosen), labels[chosen]


def _class_names(directory: Path) -> tuple[str, ...]:
    if not directory.is_dir():
        raise FileNotFoundError(
            f"Folder dataset: {directory} does not exist; expected {directory}/<class name>/<images> for every class."
        )
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
        files = sorted(
            p for p in (Path(directory) / name).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        paths += [str(p) for p in files]
        labels += [label] * len(files)
    readable = np.zeros(len(paths), bool)
    if paths:
        probe = (
            tf.data.Dataset.from_tensor_slices(paths)
            .enumerate()
            .map(
                lambda i, path: (i, tf.reduce_max(_decode_bytes(tf.io.read_file(path)))),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
            .ignore_errors()
            .map(lambda i, _: i)
            .batch(4096)
        )
        for indices in probe:
            readable[indices.numpy()] = True
    unreadable = [p for p, ok in zip(paths, readable) if not ok]
    for path in unreadable[:_UNREADABLE_NAMED_AT_MOST]:
        logging.warning(
            "Skipping unreadable image %s: it cannot be read or decoded as %s.",
            path,
            "/".join(e[1:].upper() for e in IMAGE_EXTENSIONS),
        )
    if unreadable:
        logging.warning(
            "Skipped %d of %d images under %s that cannot be read or decoded%s.",
            len(unreadable),
            len(paths),
            directory,
            f" (the first {_UNREADABLE_NAMED_AT_MOST} named above)"
            if len(unreadable) > _UNREADABLE_NAMED_AT_MOST
            else "",
        )
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
        raise FileNotFoundError(
            f"No TFRecord files {config.data_dir}/{prefix}* ('train-00000-of-01024', "
            f"'validation-00000-of-00128', ...) for split {split!r}."
        )
    counts = [_count_records(f) for f in files]
    total = sum(counts)
    if split in ("train", "validation"):
        start, stop = held_out.block(total, config)
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


@functools.cache
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
            (length,) = struct.unpack("<Q", f.read(8))
            position += 12 + length + 4
            count += 1
    if position != size:
        raise ValueError(
            f"{path} is not an uncompressed TFRecord file (record lengths do not add up to "
            f"its {size} bytes); valid are TFRecords as ImageNet's build scripts write them."
        )
    return count


# TFDS


def _tfds_builder(config: DataConfig):
    builder = _prepared_tfds_builder(config.tfds_name, config.data_dir)
    classes = getattr(builder.info.features[builder.info.supervised_keys[1]], "num_classes", None)
    if classes is not None and classes != config.num_classes:
        raise ValueError(
            f"TFDS dataset {config.tfds_name!r} has {classes} classes but data.num_classes="
            f"{config.num_classes}; set data.num_classes={classes}."
        )
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
            "--data_dir=DIR`), then set data.data_dir=DIR."
        )
    if builder.info.supervised_keys is None:
        raise ValueError(
            f"TFDS dataset {name!r} has no (image, label) supervised keys; valid are image classification datasets."
        )
    return builder


def _tfds_split(config: DataConfig, split: str) -> tuple[str, int]:
    """The TFDS split string for `split` and its size."""
    splits = _tfds_builder(config).info.splits
    if split == "test":
        name = next((n for n in ("test", "validation") if n in splits), None)
        if name is None:
            raise ValueError(
                f"TFDS dataset {config.tfds_name!r} has no 'test' or 'validation' split (it has {', '.join(splits)})."
            )
        return name, splits[name].num_examples
    total = splits["train"].num_examples
    if split == "train_full":
        return "train", total
    start, stop = held_out.block(total, config)
    if split == "validation":
        return f"train[{start}:{stop}]", stop - start
    parts = [p for p, size in ((f"train[:{start}]", start), (f"train[{stop}:]", total - stop)) if size]
    return "+".join(parts), total - (stop - start)
