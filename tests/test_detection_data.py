"""The Fashion-MNIST detection demo set (cream_tf.detection.demo_data): what it writes decodes with
Model Garden's TfExampleDecoder into the boxes and classes the generator reports, the items are
where the boxes say, RetinaNet's training parser finds positive anchors, the files are a pure
function of the seed, and bad arguments fail before anything is written."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import tensorflow as tf

from cream_tf.detection import demo_data

SIZE = 128
SPLITS = {"train": 12, "val": 4}
SHARD = 8  # images per shard: train gets two shards, val one


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(folder, records) of a tiny set."""
    folder = tmp_path_factory.mktemp("demo") / "set"
    records = demo_data.write_demo_set(folder, SPLITS, image_size=SIZE, seed=0, images_per_shard=SHARD)
    return folder, records


def _serialized(folder, split):
    names = json.loads((folder / "dataset.json").read_text())["splits"][split]["shards"]
    return [record.numpy() for record in tf.data.TFRecordDataset([str(folder / name) for name in names])]


def _decoded(folder, split):
    from official.vision.dataloaders import tf_example_decoder

    decoder = tf_example_decoder.TfExampleDecoder()
    return [decoder.decode(tf.constant(serialized)) for serialized in _serialized(folder, split)]


def test_files_and_description(demo):
    folder, records = demo
    assert sorted(p.name for p in folder.iterdir()) == [
        "dataset.json",
        "instances_train.json",
        "instances_val.json",
        "label_map.json",
        "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord",
        "val-00000-of-00001.tfrecord",
    ]
    assert json.loads((folder / "label_map.json").read_text()) == {
        "1": "T-shirt/top",
        "2": "Trouser",
        "3": "Pullover",
        "4": "Dress",
        "5": "Coat",
        "6": "Sandal",
        "7": "Shirt",
        "8": "Sneaker",
        "9": "Bag",
        "10": "Ankle boot",
    }
    description = json.loads((folder / "dataset.json").read_text())
    assert description["image_size"] == SIZE and description["seed"] == 0
    assert description["retinanet_num_classes"] == 11
    for split, count in SPLITS.items():
        assert description["splits"][split]["images"] == count == len(records[split])
        assert description["splits"][split]["objects"] == sum(len(r.classes) for r in records[split])
    assert not list(folder.parent.glob(".set.*")), "the staging folder is left behind"


def test_records_decode_to_what_was_written(demo):
    folder, records = demo
    source_ids = set()
    for split in SPLITS:
        for record, decoded, serialized in zip(
            records[split], _decoded(folder, split), _serialized(folder, split), strict=True
        ):
            assert decoded["image"].dtype == tf.uint8 and decoded["image"].shape == (SIZE, SIZE, 3)
            assert int(decoded["height"]) == int(decoded["width"]) == SIZE
            boxes = decoded["groundtruth_boxes"].numpy()
            classes = decoded["groundtruth_classes"].numpy()
            assert boxes.dtype == np.float32 and boxes.shape == (len(record.classes), 4)
            assert decoded["groundtruth_classes"].dtype == tf.int64
            assert 1 <= len(classes) <= 4
            assert np.all((boxes >= 0) & (boxes <= 1))
            assert np.all(boxes[:, 0] < boxes[:, 2]) and np.all(boxes[:, 1] < boxes[:, 3])
            assert np.all((classes >= 1) & (classes <= 10))
            np.testing.assert_array_equal(boxes, np.float32(record.boxes))
            np.testing.assert_array_equal(classes, record.classes)
            np.testing.assert_array_equal(decoded["groundtruth_area"].numpy(), record.areas)
            assert not decoded["groundtruth_is_crowd"].numpy().any()
            assert decoded["source_id"].numpy().decode() == record.source_id
            source_ids.add(record.source_id)

            features = tf.train.Example.FromString(serialized).features.feature
            encoded = features["image/encoded"].bytes_list.value[0]
            assert encoded[:3] == b"\xff\xd8\xff"  # JPEG
            assert features["image/format"].bytes_list.value == [b"jpg"]
            assert features["image/key/sha256"].bytes_list.value[0].decode() == hashlib.sha256(encoded).hexdigest()
            assert features["image/filename"].bytes_list.value[0].decode() == record.filename
            names = [demo_data.CLASS_NAMES[c - 1].encode() for c in record.classes]
            assert list(features["image/object/class/text"].bytes_list.value) == names
    assert len(source_ids) == sum(SPLITS.values())
    assert all(i.isdigit() for i in source_ids)  # Model Garden's parsers turn source ids into int64


def test_items_are_inside_their_boxes(demo):
    folder, records = demo
    for split in SPLITS:
        for record, decoded in zip(records[split], _decoded(folder, split)):
            difference = np.abs(decoded["image"].numpy() - np.float32(record.background)).max(axis=-1)
            far = np.ones((SIZE, SIZE), bool)  # more than 3 pixels from every box (JPEG ringing)
            for box in record.boxes:
                y0, x0, y1, x1 = (round(v * SIZE) for v in box)
                assert difference[y0:y1, x0:x1].mean() > 15, f"no item in box {box} of image {record.source_id}"
                far[max(y0 - 3, 0) : y1 + 3, max(x0 - 3, 0) : x1 + 3] = False
            assert far.any()
            assert difference[far].mean() < 8, f"image {record.source_id} is not background outside its boxes"


def test_retinanet_parser_finds_positive_anchors(demo):
    from official.vision.dataloaders import retinanet_input

    folder, records = demo
    parser = retinanet_input.Parser(
        output_size=[SIZE, SIZE],
        min_level=3,
        max_level=7,
        num_scales=3,
        aspect_ratios=[0.5, 1.0, 2.0],
        anchor_size=4.0,
        dtype="float32",
    )
    parse = parser.parse_fn(is_training=True)
    for record, decoded in list(zip(records["train"], _decoded(folder, "train")))[:2]:
        image, labels = parse(decoded)
        assert image.shape == (SIZE, SIZE, 3)
        assert sorted(labels["cls_targets"]) == sorted(labels["box_targets"]) == ["3", "4", "5", "6", "7"]
        # Positive anchors carry their object's class; every other anchor is -1.
        targets = np.concatenate([t.numpy().ravel() for t in labels["cls_targets"].values()])
        positives = targets[targets > 0]
        assert len(positives) >= 1 and set(positives) <= set(record.classes)
        assert np.all(targets[targets <= 0] == -1)
        assert labels["box_weights"].numpy().sum() == len(positives)


def test_coco_instances_score_the_ground_truth_as_perfect(demo):
    """instances_val.json holds the records' boxes, and Model Garden's COCOEvaluator, reading it as
    its annotation_file, gives AP 1 to detections equal to the records' boxes."""
    from official.vision.evaluation import coco_evaluator

    folder, records = demo
    instances = json.loads((folder / "instances_val.json").read_text())
    assert [c["name"] for c in instances["categories"]] == list(demo_data.CLASS_NAMES)
    assert [image["id"] for image in instances["images"]] == [int(r.source_id) for r in records["val"]]
    expected = [
        (int(r.source_id), c, [round(v * SIZE) for v in (x0, y0, x1 - x0, y1 - y0)], a)
        for r in records["val"]
        for (y0, x0, y1, x1), c, a in zip(r.boxes, r.classes, r.areas)
    ]
    written = [(a["image_id"], a["category_id"], a["bbox"], a["area"]) for a in instances["annotations"]]
    assert written == expected

    evaluator = coco_evaluator.COCOEvaluator(
        annotation_file=str(folder / "instances_val.json"), include_mask=False, need_rescale_bboxes=False
    )
    most = max(len(r.classes) for r in records["val"])
    for record in records["val"]:
        count = len(record.classes)
        boxes = np.zeros((1, most, 4), np.float32)
        boxes[0, :count] = np.float32(record.boxes) * SIZE
        predictions = {
            "source_id": tf.constant([int(record.source_id)]),
            "num_detections": tf.constant([count]),
            "detection_boxes": tf.constant(boxes),
            "detection_classes": tf.constant([list(record.classes) + [-1] * (most - count)]),
            "detection_scores": tf.constant([[1.0] * count + [0.0] * (most - count)]),
        }
        evaluator.update_state(None, predictions)
    metrics = evaluator.result()
    assert float(metrics["AP"]) == pytest.approx(1.0) and float(metrics["AP50"]) == pytest.approx(1.0)


def test_same_seed_same_bytes(demo, tmp_path):
    folder, records = demo
    again = demo_data.write_demo_set(tmp_path / "again", SPLITS, image_size=SIZE, seed=0, images_per_shard=SHARD)
    assert again == records
    for path in folder.iterdir():
        assert (tmp_path / "again" / path.name).read_bytes() == path.read_bytes(), path.name
    # Every image has its own generator: a smaller set is a prefix, another seed differs.
    prefix = demo_data.write_demo_set(tmp_path / "prefix", {"train": 3}, image_size=SIZE, seed=0)
    assert prefix["train"] == records["train"][:3]
    other = demo_data.write_demo_set(tmp_path / "other", {"train": 3}, image_size=SIZE, seed=1)
    assert other["train"] != records["train"][:3]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(image_size=64), "image_size=64 is not valid; valid: at least 3 * min_object_size = 96"),
        (dict(splits={"train": -1}), "splits['train']=-1 is not valid; valid: a whole number of images, 1.."),
        (dict(splits={"test": 2}), "splits={'test': 2} is not valid; valid: a non-empty dict with keys among train"),
        (dict(max_objects=0), "max_objects=0 is not valid; valid: a whole number 1..100"),
        (dict(max_object_size=200), "max_object_size=200 is not valid; valid: a whole number of pixels from"),
        (dict(image_format="gif"), "image_format='gif' is not valid; valid: jpeg, png"),
        (dict(seed=-1), "seed=-1 is not valid"),
    ],
)
def test_bad_arguments_fail_before_writing(tmp_path, arguments, message):
    arguments = {"splits": {"train": 1}, "image_size": SIZE, **arguments}
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("*", r"\*")):
        demo_data.write_demo_set(tmp_path / "out", **arguments)
    assert list(tmp_path.iterdir()) == []


def test_bad_output_folders(tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(ValueError, match="out_dir .*/file.* is a file"):
        demo_data.write_demo_set(file / "set", {"train": 1}, image_size=SIZE)
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep").write_text("x")
    with pytest.raises(ValueError, match="already exists and is not empty; valid: a new or empty folder"):
        demo_data.write_demo_set(full, {"train": 1}, image_size=SIZE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "full"]
    assert [p.name for p in full.iterdir()] == ["keep"]


def test_command_line_and_png(tmp_path):
    demo_data.main(
        [
            f"--out={tmp_path / 'set'}",
            "--train_images=1",
            "--val_images=0",
            f"--image_size={SIZE}",
            "--image_format=png",
        ]
    )
    assert json.loads((tmp_path / "set" / "dataset.json").read_text())["splits"].keys() == {"train"}
    (serialized,) = _serialized(tmp_path / "set", "train")
    features = tf.train.Example.FromString(serialized).features.feature
    assert features["image/format"].bytes_list.value == [b"png"]
    assert features["image/encoded"].bytes_list.value[0][:8] == b"\x89PNG\r\n\x1a\n"
    (decoded,) = _decoded(tmp_path / "set", "train")
    assert decoded["image"].shape == (SIZE, SIZE, 3)
    with pytest.raises(SystemExit, match="error: splits\\['val'\\]=-2 is not valid"):
        demo_data.main([f"--out={tmp_path / 'bad'}", "--val_images=-2"])
    assert not (tmp_path / "bad").exists()
