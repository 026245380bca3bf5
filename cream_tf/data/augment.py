"""Image augmentation: crops and flips, RandAugment, random erasing, and mixup/cutmix on batches.

Model Garden (official.vision.ops.augment) supplies RandAugment, random erasing and
mixup/cutmix. Its RandAugment runs here as `GraphSafeRandAugment`, whose integer ops work inside a
traced tf.data map; Model Garden's own op table is left as it is. Model Garden is imported when
one of them is first used: importing official.vision takes about a second of CPU (TFDS, tf_keras
and TF Text come with it) that a run with crops and flips only, as the default search, never needs.

Every random op draws from the graph seed that `load` sets while tracing, in a fixed order, so
one seed gives the same crops and augmentation in every process.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import tensorflow as tf

from cream_tf.config import DataConfig

if TYPE_CHECKING:
    from official.vision.ops import augment as augment_ops

CROP_FRACTION = 0.875  # evaluation center crop, as a fraction of the resized shorter side
_MAX_LEVEL = 10.0  # Model Garden's largest RandAugment magnitude


def crop_and_flip(image: tf.Tensor, size: int, *, small_images: bool, random: bool) -> tf.Tensor:
    """A float image cropped or resized to size x size; with `random`, a random crop and flip.

    small_images (Fashion-MNIST): a random 2-pixel shift, else the image as it is, then resized
    to `size` if it differs. Other sources: an Inception-style random crop, else the evaluation
    center crop.
    """
    if small_images:
        image = _pad_and_crop(image, size, random=random)
    elif random:
        image = _random_resized_crop(image, size)
    else:
        image = _resize_and_center_crop(image, size)
    return tf.image.random_flip_left_right(image) if random else image


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
        tf.shape(image),
        tf.zeros([1, 0, 4]),
        seed,
        min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
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
    return image[top : top + size, left : left + size]


def on_rgb(distort: Callable, image: tf.Tensor) -> tf.Tensor:
    """Model Garden's ops assume 3 channels (fill masks are tiled to 3); a grayscale image goes
    through as 3 equal channels and comes back as one."""
    if image.shape[-1] == 3:
        return distort(image)
    return distort(tf.tile(image, [1, 1, 3]))[..., :1]


# RandAugment


@functools.cache
def _augment_ops():
    """Model Garden's augment module, imported on first use (see the module's docstring)."""
    from official.vision.ops import augment

    return augment


def randaugment(config: DataConfig) -> GraphSafeRandAugment:
    """RandAugment as config sets it, for images of 0..255 pixel values (use `on_rgb`)."""
    scale = config.image_size / 224  # Model Garden's translate/cutout constants are pixels at 224
    return _graph_safe_randaugment()(
        num_layers=config.randaugment_layers,
        magnitude=config.randaugment_magnitude,
        magnitude_std=config.randaugment_magnitude_std,
        translate_const=100 * scale,
        cutout_const=40 * scale,
        # timm's rand-m9-mstd0.5 policy, which the paper trained with, has no Cutout: random
        # erasing plays that part.
        exclude_ops=["Cutout"],
    )


def posterize(image: tf.Tensor, bits) -> tf.Tensor:
    """Keeps the top `bits` bits of every pixel (PIL's posterize)."""
    shift = 8 - tf.clip_by_value(tf.cast(bits, tf.int32), 0, 8)
    pixels = tf.cast(image, tf.int32)
    return tf.cast(tf.bitwise.left_shift(tf.bitwise.right_shift(pixels, shift), shift), image.dtype)


def solarize(image: tf.Tensor, threshold=128) -> tf.Tensor:
    """Inverts pixels at or above `threshold` (PIL's solarize)."""
    pixels = tf.cast(image, tf.int32)
    return tf.cast(tf.where(pixels < tf.cast(threshold, tf.int32), pixels, 255 - pixels), image.dtype)


def solarize_add(image: tf.Tensor, addition=0, threshold=128) -> tf.Tensor:
    """Adds `addition` to pixels below `threshold`, clipped to 0..255."""
    pixels = tf.cast(image, tf.int32)
    added = tf.clip_by_value(pixels + tf.cast(addition, tf.int32), 0, 255)
    return tf.cast(tf.where(pixels < tf.cast(threshold, tf.int32), added, pixels), image.dtype)


# Model Garden's RandAugment ops with the three integer ones replaced: a copy of its table, which
# itself stays as it is for every other user of the library.
@functools.cache
def _randaugment_ops() -> dict:
    return {**_augment_ops().NAME_TO_FUNC, "Posterize": posterize, "Solarize": solarize, "SolarizeAdd": solarize_add}


@functools.cache
def _graph_safe_randaugment() -> type:
    """GraphSafeRandAugment in front of Model Garden's RandAugment, built on first use."""
    return type("GraphSafeRandAugment", (GraphSafeRandAugment, _augment_ops().RandAugment), {})


class GraphSafeRandAugment:
    """Model Garden's RandAugment with Posterize, Solarize and SolarizeAdd that work in graphs
    (`randaugment` puts it in front of that class, imported on first use).

    With magnitude_std > 0 the integer argument of those three ops is drawn per image, so inside
    a traced function (a tf.data map) it arrives as an int32 tensor, and Model Garden's versions
    then mix it with the uint8 image: "Input 'y' of 'RightShift' Op has type int32 that does not
    match type uint8" (tf-models-official 2.20, TF 2.20). The replacements (`posterize`,
    `solarize`, `solarize_add`) compute in int32 and return the image's dtype, so they give the
    originals' results for Python ints too. The ops are looked up in this module's
    `_randaugment_ops()` instead of the library's NAME_TO_FUNC. Images only, no bounding boxes.
    """

    def distort(self, image: tf.Tensor) -> tf.Tensor:
        # Model Garden's RandAugment._distort_common without boxes and with our op table. Its
        # random draws, and their order, are kept: a seed augments as the library's class does.
        dtype = image.dtype
        if dtype != tf.uint8:
            image = tf.cast(tf.clip_by_value(image, 0.0, 255.0), tf.uint8)
        augment_ops, ops = _augment_ops(), _randaugment_ops()
        level_to_arg = augment_ops.level_to_arg(self.cutout_const, self.translate_const)
        for _ in range(self.num_layers):
            selected = tf.random.uniform([], maxval=len(self.available_ops) + 1, dtype=tf.int32)
            branches = []
            for i, name in enumerate(self.available_ops):
                # The library draws a probability per op that none of these ops use; drawn all the
                # same, to keep the draws that follow where they were.
                tf.random.uniform([], minval=0.2, maxval=0.8, dtype=tf.float32)
                arguments = level_to_arg[name](self._level())
                if name in augment_ops.REPLACE_FUNCS:
                    arguments = (*arguments, [128] * 3)
                # A lambda, not a functools.partial: AutoGraph converts it along with this method,
                # and so the ops it calls, whose Python `if`s on a drawn magnitude need converting.
                branches.append((i, lambda op=ops[name], image=image, arguments=arguments: op(image, *arguments)))
            augmented = tf.switch_case(selected, branches, default=functools.partial(tf.identity, image))
            if self.prob_to_apply is not None:
                keep = tf.random.uniform([], dtype=tf.float32) < self.prob_to_apply
                augmented = tf.cond(
                    keep, functools.partial(tf.identity, augmented), functools.partial(tf.identity, image)
                )
            image = augmented
        return tf.cast(image, dtype)

    def distort_with_boxes(self, image: tf.Tensor, bboxes: tf.Tensor):
        raise NotImplementedError("GraphSafeRandAugment augments images only, not bounding boxes.")

    def _level(self):
        """The magnitude for one op; with magnitude_std > 0, plus N(0, 1) noise (Model Garden uses
        magnitude_std only as a switch) clipped to 0..10."""
        if self.magnitude_std > 0:
            return tf.clip_by_value(self.magnitude + tf.random.normal([], dtype=tf.float32), 0.0, _MAX_LEVEL)
        return self.magnitude


# Random erasing and mixup/cutmix


def random_erasing(probability: float) -> augment_ops.RandomErasing:
    """Erases a random rectangle with per-pixel N(0, 1) noise, as timm does: use it on normalized
    images (through `on_rgb`)."""
    return _augment_ops().RandomErasing(probability=probability)


def mixup_and_cutmix(config: DataConfig) -> Callable:
    """Mixup/cutmix on a batch; labels become float32 [B, num_classes] that sum to 1."""
    mix = _augment_ops().MixupAndCutmix(
        num_classes=config.num_classes,
        mixup_alpha=config.mixup_alpha,
        cutmix_alpha=config.cutmix_alpha,
        label_smoothing=0.0,
    )

    def apply(images, labels):
        batch_shape = images.shape
        if images.shape[-1] == 3:
            images, labels = mix(images, labels)
        else:  # the cutmix fill mask is tiled to 3 channels, as in on_rgb
            images, labels = mix(tf.tile(images, [1, 1, 1, 3]), labels)
            images = images[..., :1]
        # tf.cond inside the mix forgets the batch size; keep it static for distributed steps.
        return (
            tf.ensure_shape(images, batch_shape),
            tf.ensure_shape(tf.cast(labels, tf.float32), [batch_shape[0], config.num_classes]),
        )

    return apply
