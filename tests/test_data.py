"""Specification of the input pipeline (cream_tf.data): splits, preprocessing, augmentation, sources.

Fashion-MNIST comes from the installed Debian package; every other source is a tiny dataset the
test writes itself.
"""

import logging

import numpy as np
import pytest
import tensorflow as tf

from cream_tf import data
from cream_tf.config import DataConfig
from cream_tf.data import augment, sources


def fashion_mnist_installed():
    try:
        return bool(sources.fashion_mnist_dir(DataConfig()))
    except FileNotFoundError:
        return False


needs_fashion_mnist = pytest.mark.skipif(
    not fashion_mnist_installed(), reason="needs `sudo apt-get install dataset-fashion-mnist`"
)


def noise_image(seed, size=32):
    return np.random.default_rng(seed).integers(0, 256, (size, size + 8, 3), dtype=np.uint8)


def write_folder(root, per_class=(3, 3), val_per_class=1, size=32):
    """root/train/<class_i>/*.png (and val/), every image distinct noise; returns {path: image}."""
    written = {}
    for split, counts in (("train", per_class), ("val", [val_per_class] * len(per_class))):
        for label, count in enumerate(counts):
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True)
            for i in range(count):
                image = noise_image(len(written), size)
                path = folder / f"{i}.png"
                path.write_bytes(tf.io.encode_png(image).numpy())
                written[str(path)] = image
    return written


def folder_config(root, **settings):
    defaults = dict(
        name="folder", data_dir=str(root), image_size=24, channels=3, num_classes=2, validation_size=2, batch_size=4
    )
    return DataConfig(**{**defaults, **settings})


def everything(dataset):
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in dataset])
    return np.concatenate(images), np.concatenate(labels)


def write_tfrecords(root, labels_per_file, size=16):
    """ImageNet-format records: JPEG 'image/encoded', int64 'image/class/label', constant-gray images
    whose gray level is 20 * (label + 1) so a record's image says which label it carries."""
    for name, labels in labels_per_file.items():
        with tf.io.TFRecordWriter(str(root / name)) as writer:
            for label in labels:
                image = np.full((size, size, 3), 20 * (label + 1), np.uint8)
                feature = {
                    "image/encoded": tf.train.Feature(
                        bytes_list=tf.train.BytesList(value=[tf.io.encode_jpeg(image).numpy()])
                    ),
                    "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                }
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


# --- splits -------------------------------------------------------------------------------------


@needs_fashion_mnist
def test_fashion_mnist_splits_have_the_documented_sizes():
    config = DataConfig(validation_size=5000)
    sizes = {split: data.num_examples(config, split) for split in data.SPLITS}
    assert sizes == {"train": 55000, "validation": 5000, "test": 10000, "train_full": 60000}
    # The validation split really holds 5000 images (one pass over 5000, not 60000).
    _, labels = everything(data.load(config, "validation", training=False, batch_size=2500))
    assert labels.shape == (5000,) and labels.dtype == np.int32 and set(labels) == set(range(10))


def test_folder_splits_are_disjoint_and_fixed_by_the_seed(tmp_path):
    written = write_folder(tmp_path, per_class=(4, 4), val_per_class=2)
    config = folder_config(tmp_path, validation_size=3, image_size=32)
    raw = {split: everything(data.load(config, split, training=False)) for split in data.SPLITS}
    assert [len(raw[s][1]) for s in data.SPLITS] == [5, 3, 4, 8]

    def keys(images):  # each test image is distinct noise, so a rounded image identifies it
        return {np.round(im, 3).tobytes() for im in images}

    train, validation, full = keys(raw["train"][0]), keys(raw["validation"][0]), keys(raw["train_full"][0])
    assert len(train) == 5 and len(validation) == 3
    assert not train & validation and train | validation == full
    assert not keys(raw["test"][0]) & full
    again = everything(data.load(config, "validation", training=False))[0]
    np.testing.assert_array_equal(again, raw["validation"][0])
    other_seed = everything(
        data.load(folder_config(tmp_path, validation_size=3, image_size=32, seed=1), "validation", training=False)
    )[0]
    assert keys(other_seed) != validation
    assert len(written) == 12


# --- determinism, augmentation, normalization ----------------------------------------------------


def test_eval_pipeline_gives_identical_tensors_on_every_pass(tmp_path):
    write_folder(tmp_path, per_class=(3, 3))
    config = folder_config(tmp_path, augment="randaugment", random_erasing=1.0, mixup_alpha=1.0)
    dataset = data.load(config, "train_full", training=False)
    first, second = everything(dataset), everything(dataset)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert first[0].shape == (6, 24, 24, 3) and first[1].dtype == np.int32  # last partial batch kept


def test_augmentation_runs_only_when_training(tmp_path):
    write_folder(tmp_path, per_class=(3, 3))
    augmented = folder_config(tmp_path, augment="randaugment", random_erasing=1.0)
    plain = everything(data.load(folder_config(tmp_path, augment="none"), "train_full", training=False))
    evaluated = everything(data.load(augmented, "train_full", training=False))
    np.testing.assert_array_equal(evaluated[0], plain[0])  # training=False ignores every augmentation

    trained = everything(data.load(folder_config(tmp_path), "train_full", training=True, batch_size=6, seed=3))
    assert trained[0].shape == (6, 24, 24, 3)
    for image in trained[0]:  # crops and flips: no training image equals an evaluation image
        assert np.abs(plain[0] - image).reshape(6, -1).max(axis=1).min() > 0.1
    assert sorted(trained[1]) == sorted(plain[1])

    short = data.load(folder_config(tmp_path), "train_full", training=True, batch_size=4)
    assert [len(y) for _, y in short] == [4]  # the partial batch is dropped while training


@needs_fashion_mnist
def test_normalization_matches_numpy():
    config = DataConfig()
    images, labels = next(iter(data.load(config, "test", training=False, batch_size=1000)))
    raw = sources.read_idx(str(sources.fashion_mnist_dir(config)), "t10k-images-idx3-ubyte.gz")[:1000]
    expected = (raw[..., None] / 255.0 - 0.2860) / 0.3530
    np.testing.assert_allclose(images.numpy(), expected, atol=1e-5)
    assert images.numpy().mean() == pytest.approx((raw.mean() / 255 - 0.2860) / 0.3530, abs=1e-4)
    assert images.numpy().std() == pytest.approx(raw.std() / 255 / 0.3530, abs=1e-4)
    assert labels.dtype == tf.int32


def test_rgb_normalization_uses_imagenet_statistics_per_channel(tmp_path):
    for label in range(2):
        folder = tmp_path / "train" / f"c{label}"
        folder.mkdir(parents=True)
        color = np.array([255, 0, 128], np.uint8) if label == 0 else np.array([10, 200, 60], np.uint8)
        (folder / "x.png").write_bytes(tf.io.encode_png(np.tile(color, (40, 30, 1))).numpy())
    config = folder_config(tmp_path, validation_size=0)
    images, labels = everything(data.load(config, "train", training=False))
    for image, label in zip(images, labels):
        color = [255, 0, 128] if label == 0 else [10, 200, 60]
        expected = (np.array(color) / 255.0 - np.array(data.IMAGENET_MEAN)) / np.array(data.IMAGENET_STD)
        np.testing.assert_allclose(image.reshape(-1, 3).mean(0), expected, atol=1e-3)
        np.testing.assert_allclose(image.reshape(-1, 3).std(0), 0, atol=1e-3)


def test_preprocessing_metadata_records_what_evaluation_does():
    imagenet = data.preprocessing_metadata(
        DataConfig(name="tfrecord", data_dir="/x", image_size=224, channels=3, num_classes=1000)
    )
    assert imagenet["mean"] == [0.485, 0.456, 0.406] and imagenet["std"] == [0.229, 0.224, 0.225]
    assert imagenet["color"] == "RGB" and imagenet["resize_shorter_side"] == 256
    assert imagenet["crop_fraction"] == 0.875 and imagenet["input_size"] == 224
    fashion = data.preprocessing_metadata(DataConfig())
    assert fashion["color"] == "grayscale" and fashion["mean"] == [0.286] and fashion["std"] == [0.353]
    assert fashion["eval_resize"] == "none"


def test_grayscale_config_converts_rgb_images(tmp_path):
    write_folder(tmp_path)
    config = folder_config(tmp_path, channels=1)
    images, _ = next(iter(data.load(config, "test", training=False)))
    assert images.shape[1:] == (24, 24, 1)
    assert len(data.preprocessing_metadata(config)["mean"]) == 1


# --- sources ------------------------------------------------------------------------------------


def test_corrupt_and_unreadable_images_are_skipped_and_named(tmp_path, caplog):
    written = write_folder(tmp_path, per_class=(3, 3))
    truncated = tmp_path / "train" / "class_0" / "truncated.jpg"
    truncated.write_bytes(tf.io.encode_jpeg(noise_image(99)).numpy()[:300])
    garbage = tmp_path / "train" / "class_1" / "garbage.png"
    garbage.write_text("not an image")
    (tmp_path / "train" / "class_1" / "notes.txt").write_text("ignored: not an image extension")
    config = folder_config(tmp_path, validation_size=0, batch_size=16)

    with caplog.at_level(logging.WARNING):
        assert data.num_examples(config, "train") == 6
    named = "\n".join(r.getMessage() for r in caplog.records)
    assert str(truncated) in named and str(garbage) in named and "Skipped 2 of 8" in named

    images, labels = everything(data.load(config, "train", training=False))
    assert len(images) == 6 and sorted(labels) == [0, 0, 0, 1, 1, 1]
    trained = everything(data.load(config, "train", training=True, batch_size=3, repeat=True).take(4))
    assert trained[0].shape == (12, 24, 24, 3)  # two epochs through the training pipeline, no crash
    assert len(written) == 8


def test_tfrecord_round_trip_with_one_based_labels(tmp_path):
    write_tfrecords(
        tmp_path,
        {"train-00000-of-00002": [1, 2, 3], "train-00001-of-00002": [4, 5, 6], "validation-00000-of-00001": [6, 1]},
    )
    config = DataConfig(
        name="tfrecord",
        data_dir=str(tmp_path),
        image_size=16,
        channels=3,
        num_classes=6,
        validation_size=2,
        label_offset=-1,
        batch_size=8,
    )
    assert [data.num_examples(config, s) for s in data.SPLITS] == [4, 2, 2, 6]

    def gray_levels_and_labels(split):
        images, labels = everything(data.load(config, split, training=False))
        pixels = images * np.array(data.IMAGENET_STD) + np.array(data.IMAGENET_MEAN)
        return np.round(pixels.mean(axis=(1, 2, 3)) * 255 / 20).astype(int) - 1, labels

    levels, labels = gray_levels_and_labels("train_full")
    assert sorted(labels) == [0, 1, 2, 3, 4, 5]  # the 1-based stored labels, shifted
    np.testing.assert_array_equal(levels, labels + 1)  # each image came with its own label
    train, validation = gray_levels_and_labels("train")[1], gray_levels_and_labels("validation")[1]
    assert sorted(np.concatenate([train, validation])) == [0, 1, 2, 3, 4, 5]
    assert list(gray_levels_and_labels("test")[1]) == [5, 0]

    shuffled = everything(data.load(config, "train_full", training=True, batch_size=3, seed=1))
    assert sorted(shuffled[1]) == [0, 1, 2, 3, 4, 5]


def test_tfrecord_labels_out_of_range_stop_the_pipeline_with_a_clear_message(tmp_path):
    write_tfrecords(tmp_path, {"train-0": [1, 2, 3], "validation-0": [1]})
    config = DataConfig(
        name="tfrecord", data_dir=str(tmp_path), image_size=16, channels=3, num_classes=3, validation_size=0
    )  # label_offset=0 leaves 3 out of range
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"valid labels are 0\.\.2.*label_offset=0"):
        everything(data.load(config, "train", training=False))


@needs_fashion_mnist
def test_labels_out_of_range_raise_before_training():
    with pytest.raises(ValueError, match=r"labels 0\.\.9.*num_classes=5.*set data.num_classes to 10"):
        data.load(DataConfig(num_classes=5), "train", training=True)


def test_class_folder_count_must_equal_num_classes(tmp_path):
    write_folder(tmp_path)
    with pytest.raises(ValueError, match=r"2 class folders but data.num_classes=3"):
        data.load(folder_config(tmp_path, num_classes=3), "train", training=True)


def test_missing_fashion_mnist_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "FASHION_MNIST_DIRS", (str(tmp_path / "nowhere"),))
    with pytest.raises(FileNotFoundError, match=r"sudo apt-get install dataset-fashion-mnist") as error:
        data.num_examples(DataConfig(data_dir=str(tmp_path)), "train")
    assert str(tmp_path) in str(error.value)


def test_absent_tfds_dataset_is_an_error_not_a_download(tmp_path):
    config = DataConfig(name="tfds", tfds_name="mnist", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"not prepared .* never downloads"):
        data.load(config, "train", training=True)


def test_bad_settings_name_the_value_and_what_is_valid(tmp_path):
    with pytest.raises(ValueError, match=r"augment='auto'.*none, basic, randaugment"):
        data.load(DataConfig(augment="auto"), "train", training=True)
    with pytest.raises(ValueError, match=r"Unknown split 'val'.*train, validation, test, train_full"):
        data.num_examples(DataConfig(), "val")
    with pytest.raises(ValueError, match=r"mean=\(0\.5,\).*3 value"):
        data.preprocessing_metadata(DataConfig(channels=3, mean=(0.5,)))


# --- RandAugment, random erasing, mixup/cutmix ----------------------------------------------------


def test_randaugment_with_the_paper_settings_runs_in_a_tf_data_graph_and_changes_images(tmp_path):
    config = DataConfig(image_size=32, channels=3, randaugment_magnitude=9, randaugment_magnitude_std=0.5)
    image = tf.constant(noise_image(0)[:, :32].astype(np.float32))
    augmented = tf.data.Dataset.from_tensors(image).repeat(32).map(augment.randaugment(config).distort)
    changed = [bool(np.any(out.numpy() != image.numpy())) for out in augmented]
    assert sum(changed) >= 24

    write_folder(tmp_path)  # and through load(), on grayscale (one layer: a quicker trace)
    config = folder_config(tmp_path, augment="randaugment", randaugment_layers=1, channels=1)
    images, _ = everything(data.load(config, "train_full", training=True))
    assert images.shape == (4, 24, 24, 1) and np.isfinite(images).all()


def test_integer_randaugment_ops_accept_tensor_arguments_in_graphs():
    pixels = tf.constant(np.arange(256, dtype=np.uint8).reshape(16, 16, 1))
    numpy_pixels = pixels.numpy().astype(int)

    @tf.function
    def ops(bits, threshold, addition):
        return (
            augment.posterize(pixels, bits),
            augment.solarize(pixels, threshold),
            augment.solarize_add(pixels, addition, threshold),
        )

    posterized, solarized, added = ops(tf.constant(3), tf.constant(200), tf.constant(100))
    np.testing.assert_array_equal(posterized, numpy_pixels & 0b11100000)
    np.testing.assert_array_equal(solarized, np.where(numpy_pixels < 200, numpy_pixels, 255 - numpy_pixels))
    np.testing.assert_array_equal(
        added, np.where(numpy_pixels < 200, np.minimum(numpy_pixels + 100, 255), numpy_pixels)
    )
    assert posterized.dtype == tf.uint8 and solarized.dtype == tf.uint8 and added.dtype == tf.uint8


def test_randaugment_leaves_model_gardens_op_table_alone(tmp_path):
    from official.vision.ops import augment as augment_ops

    originals = {
        "Posterize": augment_ops.posterize,
        "Solarize": augment_ops.solarize,
        "SolarizeAdd": augment_ops.solarize_add,
    }
    before = dict(augment_ops.NAME_TO_FUNC)
    assert {name: before[name] for name in originals} == originals  # not replaced at import either
    write_folder(tmp_path)
    config = folder_config(tmp_path, augment="randaugment", randaugment_layers=1, randaugment_magnitude_std=0.5)
    images, _ = everything(data.load(config, "train_full", training=True, seed=0))
    assert np.isfinite(images).all()
    assert before == augment_ops.NAME_TO_FUNC


def test_random_erasing_runs_in_the_pipeline_on_grayscale(tmp_path):
    write_folder(tmp_path, per_class=(3, 3))
    settings = dict(channels=1, augment="none", batch_size=6)
    plain, _ = everything(data.load(folder_config(tmp_path, **settings), "train_full", training=False))
    erased, _ = everything(
        data.load(folder_config(tmp_path, random_erasing=1.0, **settings), "train_full", training=True)
    )
    for image in erased:  # the same image with a rectangle of noise: mostly equal, not all
        same = (np.abs(plain - image) < 1e-6).reshape(6, -1).mean(axis=1).max()
        assert 0.6 <= same < 1.0


@pytest.fixture
def op_determinism():
    tf.config.experimental.enable_op_determinism()
    yield
    from tensorflow.python.framework import config as tf_config  # no public switch back

    tf_config.disable_op_determinism()


def test_a_seed_fixes_order_and_augmentation_whatever_ran_before(tmp_path, op_determinism):
    write_folder(tmp_path, per_class=(4, 4))
    config = folder_config(tmp_path, channels=1, batch_size=6, random_erasing=0.5, mixup_alpha=0.8)

    def batches(seed, config=config):
        return everything(data.load(config, "train_full", training=True, seed=seed, repeat=True).take(3))

    tf.random.set_seed(0)  # the run's global seed, as SearchRun and RetrainRun set it once at the start
    first = batches(7)
    tf.random.uniform(())  # other random work in between moves TensorFlow's op-seed counter
    for a, b in zip(first, batches(7)):
        np.testing.assert_array_equal(a, b)

    # Another seed draws other crops, not only another order: one image, repeated, shows it.
    (tmp_path / "same").mkdir()
    one = folder_config(tmp_path / "same", channels=1, batch_size=4, validation_size=0)
    for label in range(2):
        (tmp_path / "same" / "train" / f"class_{label}").mkdir(parents=True)
        for i in range(2):
            (tmp_path / "same" / "train" / f"class_{label}" / f"{i}.png").write_bytes(
                tf.io.encode_png(noise_image(0)).numpy()
            )
    crops = [np.sort(batches(seed, one)[0].reshape(12, -1), axis=0) for seed in (7, 8)]
    assert not np.array_equal(*crops)


@pytest.mark.parametrize("mixup_alpha,cutmix_alpha", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixup_and_cutmix_give_soft_labels_that_sum_to_one(tmp_path, mixup_alpha, cutmix_alpha):
    write_folder(tmp_path, per_class=(3, 3))
    config = folder_config(tmp_path, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, batch_size=6, channels=1)
    dataset = data.load(config, "train_full", training=True, repeat=True, seed=0)
    assert dataset.element_spec[1] == tf.TensorSpec([6, 2], tf.float32)
    labels = np.concatenate([y.numpy() for _, y in dataset.take(8)])
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-6)
    assert labels.min() >= 0 and (labels.max(axis=1) < 1 - 1e-6).any()  # some are mixed
    eval_labels = data.load(config, "train_full", training=False).element_spec[1]
    assert eval_labels == tf.TensorSpec([None], tf.int32)


# --- callers: distribution and samples ----------------------------------------------------------


def test_both_distribution_apis_accept_the_dataset(tmp_path):
    write_folder(tmp_path, per_class=(4, 4))
    config = folder_config(tmp_path, batch_size=4)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    dataset = data.load(config, "train", training=True, repeat=True, seed=0)
    assert dataset.element_spec[0].shape == (4, 24, 24, 3)  # static batch while training
    images, _ = next(iter(strategy.experimental_distribute_dataset(dataset)))
    assert images.shape == (4, 24, 24, 3)
    per_pipeline = strategy.distribute_datasets_from_function(
        lambda ctx: data.load(
            config,
            "train",
            training=True,
            repeat=True,
            seed=ctx.input_pipeline_id,
            batch_size=ctx.get_per_replica_batch_size(config.batch_size),
        )
    )
    images, labels = next(iter(per_pipeline))
    assert images.shape == (4, 24, 24, 3) and labels.shape == (4,)


def test_sample_images_are_eval_mode_and_always_the_same(tmp_path):
    write_folder(tmp_path, per_class=(4, 4))
    config = folder_config(tmp_path, augment="randaugment", random_erasing=1.0)
    first, second = data.sample_images(config, "train", 5), data.sample_images(config, "train", 5)
    assert first.shape == (5, 24, 24, 3) and first.dtype == np.float32
    np.testing.assert_array_equal(first, second)
    plain = everything(data.load(config, "train", training=False))[0]
    for image in first:  # eval preprocessing: each sample is one of the eval images exactly
        assert np.abs(plain - image).reshape(len(plain), -1).max(axis=1).min() == 0
    with pytest.raises(ValueError, match=r"count=7 .*holds 6.*1\.\.6"):
        data.sample_images(config, "train", 7)


def test_an_entry_is_measured_with_the_preprocessing_its_metadata_records():
    exported = DataConfig(name="fashion_mnist", image_size=32, channels=1, mean=(0.5,), std=(0.25,))
    recorded = data.preprocessing_metadata(exported)
    measured = data.config_for_entry(DataConfig(name="fashion_mnist", image_size=28, channels=1), recorded)
    assert (measured.image_size, measured.channels, measured.mean, measured.std) == (32, 1, (0.5,), (0.25,))
    assert data.preprocessing_metadata(measured) == recorded
    assert data.config_for_entry(exported, None) is exported
