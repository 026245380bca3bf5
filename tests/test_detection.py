"""RetinaNet with a Cream backbone through TensorFlow Model Garden (cream_tf.detection): its drivers
train, evaluate and export it on a tiny demo set; bad settings are refused before any work."""

import json
import subprocess
import sys

import numpy as np
import pytest

from cream_tf.detection.demo_data import write_demo_set

SIZE = 128


def detection(*args, cwd) -> str:
    """`python -m cream_tf.detection ARGS`; its output, after checking that it succeeded."""
    done = subprocess.run(
        [sys.executable, "-m", "cream_tf.detection", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{args[0]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done.stdout + done.stderr


def test_retinanet_with_a_cream_backbone_trains_evaluates_and_exports(tmp_path):
    """A few steps and an evaluation (COCO AP from Model Garden's evaluator) with the demo recipe,
    its SavedModel export, and a TFLite file of it that runs."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    data = tmp_path / "data"
    write_demo_set(data, {"train": 8, "val": 4}, image_size=SIZE)
    overrides = ",".join(
        [
            f"task.model.input_size=[{SIZE},{SIZE},3]",
            "task.model.backbone.cream.model=cream_14",
            f"task.train_data.input_path={data}/train-*",
            f"task.validation_data.input_path={data}/val-*",
            f"task.annotation_file={data}/instances_val.json",
            "task.train_data.global_batch_size=4",
            "task.validation_data.global_batch_size=4",
            "trainer.train_steps=2",
            "trainer.steps_per_loop=2",
            "trainer.summary_interval=2",
            "trainer.checkpoint_interval=2",
            "trainer.validation_interval=2",
            "trainer.validation_steps=1",
        ]
    )
    model_dir, export_dir = tmp_path / "model", tmp_path / "export"
    common = ["--experiment=retinanet_cream_demo", f"--params_override={overrides}"]
    log = detection("train", *common, "--mode=train_and_eval", f"--model_dir={model_dir}", cwd=tmp_path)
    assert "train | step:      2" in log and "'AP50'" in log and "'APl'" in log, log[-3000:]
    assert list((model_dir / "train").glob("events.out.tfevents.*")), "no TensorBoard summaries of training"
    assert list((model_dir / "validation").glob("events.out.tfevents.*")), "no TensorBoard summaries of evaluation"
    params = (model_dir / "params.yaml").read_text()
    assert "type: cream" in params and "model: cream_14" in params

    detection(
        "export",
        *common,
        f"--checkpoint_path={model_dir}",
        f"--export_dir={export_dir}",
        f"--input_image_size={SIZE},{SIZE}",
        "--batch_size=1",
        cwd=tmp_path,
    )
    image = np.random.default_rng(0).integers(0, 256, (1, SIZE, SIZE, 3)).astype(np.uint8)
    served = tf.saved_model.load(str(export_dir / "saved_model")).signatures["serving_default"]
    outputs = served(tf.constant(image))
    assert outputs["detection_boxes"].shape == (1, 100, 4) and outputs["num_detections"].shape == (1,)

    tflite = tmp_path / "model.tflite"
    detection(
        "tflite", *common, f"--saved_model_dir={export_dir / 'saved_model'}", f"--tflite_path={tflite}", cwd=tmp_path
    )
    interpreter = Interpreter(model_path=str(tflite))
    (given,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(given["index"], [1, SIZE, SIZE, 3])
    interpreter.allocate_tensors()
    interpreter.set_tensor(given["index"], image)
    interpreter.invoke()
    shapes = sorted(tuple(interpreter.get_tensor(d["index"]).shape) for d in interpreter.get_output_details())
    assert (1, 100, 4) in shapes and (1, 100) in shapes, shapes
    # The SavedModel and the TFLite file find the same boxes.
    tflite_boxes = next(
        interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details() if tuple(d["shape"]) == (1, 100, 4)
    )
    assert np.abs(tflite_boxes - outputs["detection_boxes"].numpy()).max() <= 1e-2 * SIZE


def test_the_experiments_are_registered_with_model_garden():
    from official.core import exp_factory

    import cream_tf.detection.garden  # noqa: F401

    coco = exp_factory.get_exp_config("retinanet_cream_coco")
    assert coco.task.model.backbone.type == "cream" and coco.task.model.input_size == [640, 640, 3]
    assert coco.task.init_checkpoint is None and coco.task.model.num_classes == 91
    demo, peer = (exp_factory.get_exp_config(f"retinanet_{b}_demo") for b in ("cream", "mobilenetv3small"))
    assert peer.task.model.backbone.type == "mobilenet"
    assert json.dumps(demo.task.model.head.as_dict()) == json.dumps(peer.task.model.head.as_dict())
    assert demo.trainer.as_dict() == peer.trainer.as_dict()  # trained the same way


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"model": "cream_99"}, r"model='cream_99' is neither a zoo name nor an architecture string"),
        ({"model": "cream_14", "max_level": 6}, r"Levels 2\.\.6 asked of .* which has levels 2\.\.5"),
        ({"model": "cream_14", "weights": "nowhere.h5"}, r"weights='nowhere.h5' is not a .keras file"),
    ],
)
def test_bad_backbone_settings_are_refused(settings, message):
    import tf_keras
    from official.vision.configs import common
    from official.vision.modeling.backbones import factory

    from cream_tf.detection.garden import Backbone, CreamBackbone

    config = Backbone(type="cream", cream=CreamBackbone(**settings))
    with pytest.raises(ValueError, match=message):
        factory.build_backbone(tf_keras.layers.InputSpec(shape=[None, SIZE, SIZE, 3]), config, common.NormActivation())


def test_an_unknown_command_is_refused():
    done = subprocess.run([sys.executable, "-m", "cream_tf.detection", "fit"], capture_output=True, text=True)
    assert done.returncode != 0 and "got 'fit'; valid commands are data, train, export, tflite" in done.stderr
