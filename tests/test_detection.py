"""RetinaNet with a Cream backbone through TensorFlow Model Garden (cream_tf.detection): the
registered experiments, and bad settings refused before any work. Training, evaluation and export
through Model Garden's drivers: tests/test_benchmarks.py's detection smoke."""

import json
import subprocess
import sys

import pytest

SIZE = 128


def test_the_experiments_are_registered_with_model_garden():
    from official.core import exp_factory

    import cream_tf.detection.garden  # noqa: F401

    coco = exp_factory.get_exp_config("retinanet_cream_coco")
    assert coco.task.model.backbone.type == "cream" and coco.task.model.input_size == [640, 640, 3]
    assert coco.task.init_checkpoint is None and coco.task.model.num_classes == 91
    demo = exp_factory.get_exp_config("retinanet_cream_demo")
    for peer in (exp_factory.get_exp_config(f"retinanet_mobilenetv3{size}_demo") for size in ("large", "small")):
        assert peer.task.model.backbone.type == "mobilenet"
        model, theirs = demo.task.model.as_dict(), peer.task.model.as_dict()
        assert json.dumps({**model, "backbone": None}) == json.dumps({**theirs, "backbone": None})
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


def test_the_tasks_l2_decay_reaches_the_convolution_kernels_and_sync_bn_is_read():
    """Model Garden hands the task's L2 regularizer to the backbone builder: one loss per
    (non-depthwise) convolution kernel, summing to the regularizer over those kernels."""
    import tensorflow as tf
    import tf_keras
    from official.vision.configs import common
    from official.vision.modeling.backbones import factory

    from cream_tf.detection.garden import cream_backbone

    spec = tf_keras.layers.InputSpec(shape=[None, SIZE, SIZE, 3])
    l2 = tf_keras.regularizers.l2(1e-4)
    plain = common.NormActivation(use_sync_bn=False)
    model = factory.build_backbone(spec, cream_backbone("cream_14"), plain, l2_regularizer=l2)
    kernels = [layer.kernel for layer in model.layers if type(layer) is tf_keras.layers.Conv2D]
    assert len(kernels) > 20 and len(model.losses) == len(kernels)
    expected = sum(float(l2(kernel)) for kernel in kernels)
    assert abs(float(tf.add_n(model.losses)) - expected) <= 1e-6 * expected
    synced = factory.build_backbone(spec, cream_backbone("cream_14"), common.NormActivation(use_sync_bn=True))
    norms = [layer for layer in synced.layers if isinstance(layer, tf_keras.layers.BatchNormalization)]
    assert norms and all(layer.synchronized for layer in norms)
    assert not any(
        layer.synchronized for layer in model.layers if isinstance(layer, tf_keras.layers.BatchNormalization)
    )
