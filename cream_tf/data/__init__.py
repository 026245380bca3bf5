"""The input pipeline that search, retraining and evaluation share: `load(config, split, ...)`.

Sources (`DataConfig.name`): fashion_mnist (idx files), folder (class-per-folder images),
tfrecord (ImageNet-format TFRecords) and tfds (a prepared TFDS dataset); see `sources` for where
each looks.

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

Modules (the settings' check is `DataConfig.validate`): `sources` (the four sources and label
checks), `held_out` (the validation split), `augment` (crops, flips, RandAugment, random
erasing, mixup/cutmix), `pipeline` (`load` and the functions below).

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

from cream_tf.config import AUGMENTS, SOURCES, SPLITS
from cream_tf.data.augment import CROP_FRACTION
from cream_tf.data.pipeline import (
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    config_for_entry,
    load,
    num_examples,
    preprocessing_metadata,
    sample_images,
    to_pixels,
)
from cream_tf.data.sources import FASHION_MNIST_CLASSES, FASHION_MNIST_DIRS, IMAGE_EXTENSIONS, class_names

__all__ = [
    "load",
    "num_examples",
    "preprocessing_metadata",
    "class_names",
    "FASHION_MNIST_CLASSES",
    "config_for_entry",
    "sample_images",
    "to_pixels",
    "SOURCES",
    "SPLITS",
    "AUGMENTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "FASHION_MNIST_DIRS",
    "CROP_FRACTION",
    "IMAGE_EXTENSIONS",
]
