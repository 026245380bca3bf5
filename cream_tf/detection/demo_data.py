"""A small object-detection demo set built from Fashion-MNIST, for a machine that cannot reach COCO.

It is not a benchmark: it exists so that a detection pipeline (TensorFlow Model Garden's RetinaNet
task, tf-models-official 2.20) can be trained and evaluated end to end without downloading COCO.

Every image is an RGB square canvas, `image_size` pixels a side, with a plain or lightly noisy dark
background and 1 to `max_objects` Fashion-MNIST items pasted on it. Each item is scaled
(bilinear) to a random side between `min_object_size` and `max_object_size` pixels, tinted with a
random colour half of the time and blended in where it is brighter than FOREGROUND_THRESHOLD;
items whose boxes would overlap another's with an IoU of MAX_IOU or more are moved, or left out
after PLACEMENT_TRIES tries. An object's box is the tight box of the item's pixels above that
threshold, its class the Fashion-MNIST label. `train` canvases take items from Fashion-MNIST's
training split, `val` canvases from its test split.

Files, in the format Model Garden's COCO converter writes (official/vision/data/create_coco_tf_record.py
and official/vision/data/tfrecord_lib.py), read by official/vision/dataloaders/tf_example_decoder.py:

    OUT/train-00000-of-00002.tfrecord ...  tf.Examples, 1000 images per shard by default
    OUT/val-00000-of-00001.tfrecord
    OUT/instances_train.json, instances_val.json   the same boxes as COCO instances files
    OUT/label_map.json                      {"1": "T-shirt/top", ..., "10": "Ankle boot"}
    OUT/dataset.json                        what the set is, its counts, settings and shards

For RetinaNet (official/vision/configs/retinanet.py): task.model.num_classes=11,
task.train_data.input_path=OUT/train-*.tfrecord, task.validation_data.input_path=OUT/val-*.tfrecord
and task.annotation_file=OUT/instances_val.json. Without an annotation file the COCOEvaluator builds
its ground truth from the validation batches, and in tf-models-official 2.20 that fails under
NumPy 2 (coco_utils.convert_groundtruths_to_coco_dataset calls int() on the parser's
one-element `num_detections`).

Format decisions:
  - Images are JPEG (quality 95, `image/format` "jpg") by default, as COCO's are: the noisy
    backgrounds make PNGs several times larger. `image_format="png"` writes lossless PNGs.
  - Labels are COCO-style: Fashion-MNIST label + 1, so 1..10, and 0 stays background.
  - `image/source_id` is a decimal number (Model Garden's parsers turn it into an int64): train
    images are 1, 2, ..., val images VAL_FIRST_ID, VAL_FIRST_ID + 1, ..., all below 2**22 as the
    decoder's own generated ids are.
  - `image/object/area` is the item's foreground pixel count (COCO's area is its mask's), and
    `image/object/is_crowd` is 0.
  - Shards hold consecutive images (the converter deals them out round-robin; readers shuffle either
    way) and are named `<split>-%05d-of-%05d.tfrecord` as the converter names them.

The set is a pure function of its settings and seed: each image draws from its own generator,
seeded by (seed, split, index), so a smaller set is a prefix of a larger one with the same seed.
Everything is written into a staging folder beside OUT that replaces OUT only when complete
(cream_tf.atomic.staged_folder).

    .venv/bin/python -m cream_tf.detection.demo_data --out=/tmp/demo_det \\
        --train_images=2000 --val_images=200 --image_size=256
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import math
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image

from cream_tf import atomic
from cream_tf.config import DataConfig, invalid
from cream_tf.data import sources

CLASS_NAMES = sources.FASHION_MNIST_CLASSES
LABEL_OFFSET = 1  # COCO-style ids: 0 is background
SPLITS = ("train", "val")
_SPLIT_STREAMS = {"train": 0, "val": 1}  # part of every image's seed
# The Fashion-MNIST split each demo split takes its items from (sources.fashion_mnist_split's names).
_ITEM_SPLITS = {"train": "train_full", "val": "test"}
VAL_FIRST_ID = 1_000_000
MAX_IMAGES_PER_SPLIT = VAL_FIRST_ID - 1  # keeps train ids below VAL_FIRST_ID, val ids below 2**22
MAX_OBJECTS_LIMIT = 100  # Model Garden's RetinaNet parser pads to max_num_instances=100 by default
MIN_OBJECT_SIZE_LIMIT = 8

FOREGROUND_THRESHOLD = 0.1  # item intensity (0..1) above which a pixel is the item's
MAX_IOU = 0.3  # boxes of one image overlap less than this
PLACEMENT_TRIES = 10
TINT_PROBABILITY = 0.5
TINT_RANGE = (0.6, 1.0)  # per channel, times 255: the colour an item's brightest pixels take
BACKGROUND_LEVELS = (0, 80)  # the background's grey level, drawn per image
BACKGROUND_COLOUR_SHIFT = 12  # at most this much added to or taken from each channel's level
BACKGROUND_NOISE_STD = (0.0, 6.0)  # Gaussian pixel noise, its std drawn per image
JPEG_QUALITY = 95
IMAGE_FORMATS = {"jpeg": "jpg", "png": "png"}  # --image_format -> the `image/format` value
LOG_EVERY = 250


@dataclasses.dataclass(frozen=True)
class DemoImage:
    """What was written for one image: its ids, objects and background colour."""

    source_id: str
    filename: str
    boxes: tuple[tuple[float, float, float, float], ...]  # normalized [ymin, xmin, ymax, xmax], float32 values
    classes: tuple[int, ...]  # 1-based (Fashion-MNIST label + LABEL_OFFSET)
    areas: tuple[int, ...]  # foreground pixels of each item
    background: tuple[int, int, int]  # the background's RGB level before noise


@dataclasses.dataclass(frozen=True)
class _Settings:
    image_size: int
    max_objects: int
    min_object_size: int
    max_object_size: int
    image_format: str
    seed: int


def write_demo_set(
    out_dir,
    splits: dict[str, int] | None = None,
    image_size: int = 256,
    seed: int = 0,
    max_objects: int = 4,
    min_object_size: int = 32,
    max_object_size: int | None = None,
    image_format: str = "jpeg",
    images_per_shard: int = 1000,
    overwrite: bool = False,
    fashion_mnist_dir: str = "",
) -> dict[str, list[DemoImage]]:
    """Writes the demo set into `out_dir` and returns, per split, what each image holds.

    splits: images per split, keys among SPLITS (default {"train": 2000, "val": 200}).
    max_object_size: default image_size // 3.
    overwrite: replace an existing non-empty `out_dir` (an empty one is always replaced).
    fashion_mnist_dir: where the idx files are, before sources.FASHION_MNIST_DIRS.

    Every argument is checked (ValueError naming the value and what is valid) and Fashion-MNIST
    located before anything is written.
    """
    splits = {"train": 2000, "val": 200} if splits is None else dict(splits)
    settings = _checked_settings(image_size, max_objects, min_object_size, max_object_size, image_format, seed)
    _check_output(splits, images_per_shard, out_dir, overwrite)
    data_config = DataConfig(data_dir=fashion_mnist_dir)
    sources.fashion_mnist_dir(data_config)  # FileNotFoundError with the install hint, before writing

    out_dir = Path(out_dir)
    written, shards = {}, {}
    with atomic.staged_folder(out_dir, overwrite=overwrite or _is_empty_folder(out_dir)) as staging:
        for split, count in splits.items():
            items, labels = sources.fashion_mnist_split(data_config, _ITEM_SPLITS[split])
            images = (_demo_image(split, index, items[..., 0], labels, settings) for index in range(count))
            written[split], shards[split] = _write_split(staging, split, count, images, images_per_shard)
            atomic.write_json(staging / f"instances_{split}.json", _coco_instances(written[split], image_size))
        atomic.write_json(staging / "label_map.json", label_map())
        atomic.write_json(staging / "dataset.json", _description(settings, written, shards))
    logging.info("Wrote the demo set to %s.", out_dir)
    return written


def label_map() -> dict[str, str]:
    """Class id (as a JSON key) -> Fashion-MNIST class name, ids 1..10."""
    return {str(label + LABEL_OFFSET): name for label, name in enumerate(CLASS_NAMES)}


def source_id(split: str, index: int) -> str:
    """The decimal `image/source_id` of image `index` (0-based) of `split`."""
    return str(index + (1 if split == "train" else VAL_FIRST_ID))


# Argument checks


def _whole(value, low: int, high: int | None = None) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value and (high is None or value <= high)


def _checked_settings(image_size, max_objects, min_object_size, max_object_size, image_format, seed) -> _Settings:
    """The canvas settings, max_object_size defaulted to image_size // 3; ValueError for the first bad one."""
    if not _whole(image_size, MIN_OBJECT_SIZE_LIMIT):
        raise invalid("image_size", image_size, f"a whole number of pixels >= {MIN_OBJECT_SIZE_LIMIT}")
    if not _whole(min_object_size, MIN_OBJECT_SIZE_LIMIT, image_size):
        raise invalid(
            "min_object_size", min_object_size, f"a whole number of pixels, {MIN_OBJECT_SIZE_LIMIT}..image_size"
        )
    if max_object_size is None and image_size // 3 < min_object_size:
        raise invalid(
            "image_size",
            image_size,
            f"at least 3 * min_object_size = {3 * min_object_size} pixels, as items are min_object_size="
            f"{min_object_size} to image_size // 3 pixels (or lower min_object_size, or set max_object_size)",
        )
    max_object_size = image_size // 3 if max_object_size is None else max_object_size
    if not _whole(max_object_size, min_object_size, image_size):
        raise invalid(
            "max_object_size",
            max_object_size,
            f"a whole number of pixels from min_object_size={min_object_size} to image_size={image_size}",
        )
    if not _whole(max_objects, 1, MAX_OBJECTS_LIMIT):
        raise invalid("max_objects", max_objects, f"a whole number 1..{MAX_OBJECTS_LIMIT}")
    if image_format not in IMAGE_FORMATS:
        raise invalid("image_format", image_format, ", ".join(IMAGE_FORMATS))
    if not _whole(seed, 0):
        raise invalid("seed", seed, "a whole number >= 0")
    return _Settings(image_size, max_objects, min_object_size, max_object_size, image_format, seed)


def _check_output(splits: dict, images_per_shard: int, out_dir, overwrite: bool) -> None:
    """ValueError for bad split counts, shard size or output folder."""
    if not splits or any(split not in SPLITS for split in splits):
        raise invalid("splits", splits, f"a non-empty dict with keys among {', '.join(SPLITS)}")
    for split, count in splits.items():
        if not _whole(count, 1, MAX_IMAGES_PER_SPLIT):
            raise invalid(f"splits[{split!r}]", count, f"a whole number of images, 1..{MAX_IMAGES_PER_SPLIT}")
    if not _whole(images_per_shard, 1):
        raise invalid("images_per_shard", images_per_shard, "a whole number >= 1")
    atomic.check_folder(out_dir, "out_dir")
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite and not _is_empty_folder(out_dir):
        raise ValueError(
            f"out_dir {str(out_dir)!r} already exists and is not empty; valid: a new or empty folder, "
            "or overwrite=True (--overwrite) to replace it."
        )


def _is_empty_folder(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


# Canvases


def _demo_image(split: str, index: int, items: np.ndarray, labels: np.ndarray, settings: _Settings):
    """Draws image `index` of `split` from its own generator: (DemoImage, serialized tf.Example).
    Map keys are serialized in sorted order, so equal images are equal bytes."""
    rng = np.random.default_rng([settings.seed, _SPLIT_STREAMS[split], index])
    size = settings.image_size
    canvas, background = _background(rng, size)
    boxes, classes, areas = [], [], []
    tries = int(rng.integers(1, settings.max_objects + 1))
    while tries > 0 or not boxes:  # at least one object: the first only fails for an empty item
        tries -= 1
        item = rng.integers(len(items))
        alpha = _scaled_item(items[item], int(rng.integers(settings.min_object_size, settings.max_object_size + 1)))
        box = _place(rng, alpha, size, boxes)
        if box is None:
            continue
        _paste(canvas, alpha, box, _tint(rng))
        boxes.append(box)
        classes.append(int(labels[item]) + LABEL_OFFSET)
        areas.append(int(np.count_nonzero(alpha)))
    encoded = _encode(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), settings.image_format)
    image_id = source_id(split, index)
    record = DemoImage(
        source_id=image_id,
        filename=f"{split}_{image_id}.{IMAGE_FORMATS[settings.image_format]}",
        boxes=tuple(_normalized(box, size) for box in boxes),
        classes=tuple(classes),
        areas=tuple(areas),
        background=background,
    )
    return record, _example(record, encoded, size).SerializeToString(deterministic=True)


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A float32 [size, size, 3] canvas: one dark colour plus Gaussian noise, and that colour."""
    level = rng.integers(BACKGROUND_LEVELS[0], BACKGROUND_LEVELS[1] + 1)
    shift = rng.integers(-BACKGROUND_COLOUR_SHIFT, BACKGROUND_COLOUR_SHIFT + 1, size=3)
    colour = np.clip(level + shift, 0, 255)
    noise = rng.normal(0.0, rng.uniform(*BACKGROUND_NOISE_STD), size=(size, size, 3))
    return (colour + noise).astype(np.float32), tuple(int(c) for c in colour)


def _scaled_item(item: np.ndarray, side: int) -> np.ndarray:
    """A 28x28 uint8 item scaled (bilinear) to side x side, as intensities 0..1 that are zero
    wherever the item is not above FOREGROUND_THRESHOLD."""
    scaled = np.asarray(Image.fromarray(item.astype(np.float32) / 255).resize((side, side), Image.Resampling.BILINEAR))
    return np.where(scaled > FOREGROUND_THRESHOLD, np.clip(scaled, 0.0, 1.0), 0.0).astype(np.float32)


def _place(rng: np.random.Generator, alpha: np.ndarray, size: int, placed: list) -> tuple | None:
    """A pixel box (y0, x0, y1, x1, top, left) for the item at a random position whose tight box
    overlaps every placed box with IoU < MAX_IOU; None after PLACEMENT_TRIES failures (or for an
    item with no foreground). y1 and x1 are exclusive; top and left place the item's square."""
    rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    if not len(rows):
        return None
    side = alpha.shape[0]
    for _ in range(PLACEMENT_TRIES):
        top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        box = (top + rows[0], left + cols[0], top + rows[-1] + 1, left + cols[-1] + 1, top, left)
        if all(_iou(box, other) < MAX_IOU for other in placed):
            return tuple(int(v) for v in box)
    return None


def _iou(a: tuple, b: tuple) -> float:
    height = min(a[2], b[2]) - max(a[0], b[0])
    width = min(a[3], b[3]) - max(a[1], b[1])
    overlap = max(height, 0) * max(width, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - overlap
    return overlap / union


def _tint(rng: np.random.Generator) -> np.ndarray:
    """The RGB colour (0..255) of an item's brightest pixels: white, or a random tint."""
    if rng.uniform() < TINT_PROBABILITY:
        return rng.uniform(*TINT_RANGE, size=3).astype(np.float32) * 255
    return np.full(3, 255, np.float32)


def _paste(canvas: np.ndarray, alpha: np.ndarray, box: tuple, colour: np.ndarray) -> None:
    """Blends `colour` into the canvas over the item's square, weighted by the item's intensity."""
    top, left, side = box[4], box[5], alpha.shape[0]
    region = canvas[top : top + side, left : left + side]
    region += alpha[..., None] * (colour - region)


def _normalized(box: tuple, size: int) -> tuple[float, float, float, float]:
    """[ymin, xmin, ymax, xmax] of a pixel box, divided by the image side, as float32 values."""
    return tuple(float(v) for v in np.float32(box[:4]) / np.float32(size))


def _encode(image: np.ndarray, image_format: str) -> bytes:
    buffer = io.BytesIO()
    if image_format == "jpeg":
        Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


# Records


def _example(record: DemoImage, encoded: bytes, image_size: int) -> tf.train.Example:
    """The tf.Example with the keys (and value types) of Model Garden's COCO converter:
    tfrecord_lib.image_info_to_feature_dict and create_coco_tf_record.bbox_annotations_to_feature_dict."""
    ymin, xmin, ymax, xmax = (list(column) for column in zip(*record.boxes))
    features = {
        "image/height": _ints([image_size]),
        "image/width": _ints([image_size]),
        "image/filename": _bytes([record.filename.encode()]),
        "image/source_id": _bytes([record.source_id.encode()]),
        "image/key/sha256": _bytes([hashlib.sha256(encoded).hexdigest().encode()]),
        "image/encoded": _bytes([encoded]),
        "image/format": _bytes([record.filename.rsplit(".", 1)[1].encode()]),
        "image/object/bbox/xmin": _floats(xmin),
        "image/object/bbox/xmax": _floats(xmax),
        "image/object/bbox/ymin": _floats(ymin),
        "image/object/bbox/ymax": _floats(ymax),
        "image/object/class/text": _bytes([CLASS_NAMES[c - LABEL_OFFSET].encode() for c in record.classes]),
        "image/object/class/label": _ints(record.classes),
        "image/object/is_crowd": _ints([0] * len(record.classes)),
        "image/object/area": _floats(record.areas),
    }
    return tf.train.Example(features=tf.train.Features(feature=features))


def _ints(values) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def _floats(values) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def _bytes(values) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def shard_names(split: str, count: int, images_per_shard: int = 1000) -> list[str]:
    """The shard file names of a split of `count` images, as the COCO converter names them."""
    shards = math.ceil(count / images_per_shard)
    return [f"{split}-{i:05d}-of-{shards:05d}.tfrecord" for i in range(shards)]


def _write_split(folder: Path, split: str, count: int, images, images_per_shard: int):
    """Writes `count` (DemoImage, serialized tf.Example) pairs into consecutive shards; returns the
    records and the shard names."""
    records, names = [], shard_names(split, count, images_per_shard)
    for shard, name in enumerate(names):
        with tf.io.TFRecordWriter(str(folder / name)) as writer:
            for _ in range(min(images_per_shard, count - shard * images_per_shard)):
                record, serialized = next(images)
                writer.write(serialized)
                records.append(record)
                if len(records) % LOG_EVERY == 0 or len(records) == count:
                    logging.info("%s: %d of %d images written.", split, len(records), count)
    return records, names


def _coco_instances(records: list[DemoImage], image_size: int) -> dict:
    """The split's boxes as a COCO instances file (the JSON create_coco_tf_record.py reads), for
    Model Garden's COCOEvaluator `annotation_file`: ids and sizes in pixels, bbox [x, y, w, h]."""
    images, annotations = [], []
    for record in records:
        image_id = int(record.source_id)
        images.append({"id": image_id, "file_name": record.filename, "height": image_size, "width": image_size})
        for box, label, area in zip(record.boxes, record.classes, record.areas):
            y0, x0, y1, x1 = (round(v * image_size) for v in box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": area,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": int(i), "name": name, "supercategory": "fashion"} for i, name in label_map().items()]
    return {"images": images, "annotations": annotations, "categories": categories}


def _description(settings: _Settings, written: dict, shards: dict) -> dict:
    """dataset.json: what the set is, how it was made and what each split holds."""
    return {
        "description": (
            "Object-detection demo set for machines that cannot reach COCO: Fashion-MNIST items pasted on "
            "plain or noisy canvases, one box per item, in Model Garden's COCO TFRecord format. "
            "Written by cream_tf.detection.demo_data."
        ),
        "image_size": settings.image_size,
        "image_format": IMAGE_FORMATS[settings.image_format],
        "seed": settings.seed,
        "max_objects": settings.max_objects,
        "object_size": [settings.min_object_size, settings.max_object_size],
        "classes": len(CLASS_NAMES),
        "label_offset": LABEL_OFFSET,
        "retinanet_num_classes": len(CLASS_NAMES) + LABEL_OFFSET,
        "label_map": "label_map.json",
        "splits": {
            split: {
                "images": len(records),
                "objects": sum(len(r.classes) for r in records),
                "items_from": f"Fashion-MNIST {'training' if split == 'train' else 'test'} split",
                "shards": shards[split],
                "file_pattern": f"{split}-*.tfrecord",
                "coco_annotations": f"instances_{split}.json",
            }
            for split, records in written.items()
        },
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="The folder to write (new, empty, or with --overwrite).")
    parser.add_argument("--train_images", type=int, default=2000, help="0 writes no train split.")
    parser.add_argument("--val_images", type=int, default=200, help="0 writes no val split.")
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_objects", type=int, default=4)
    parser.add_argument("--min_object_size", type=int, default=32)
    parser.add_argument("--max_object_size", type=int, default=None, help="Default: image_size // 3.")
    parser.add_argument("--image_format", choices=tuple(IMAGE_FORMATS), default="jpeg")
    parser.add_argument("--images_per_shard", type=int, default=1000)
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing non-empty --out.")
    parser.add_argument("--fashion_mnist_dir", default="", help="Where the idx .gz files are, if not the default.")
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.INFO)
    try:
        write_demo_set(
            args.out,
            splits={s: n for s, n in (("train", args.train_images), ("val", args.val_images)) if n != 0},
            image_size=args.image_size,
            seed=args.seed,
            max_objects=args.max_objects,
            min_object_size=args.min_object_size,
            max_object_size=args.max_object_size,
            image_format=args.image_format,
            images_per_shard=args.images_per_shard,
            overwrite=args.overwrite,
            fashion_mnist_dir=args.fashion_mnist_dir,
        )
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
