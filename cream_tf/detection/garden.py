"""Cream backbones in TensorFlow Model Garden: a registered backbone (`cream`) and RetinaNet experiments.

Importing this module registers, with Model Garden's factories (tf-models-official,
`official.vision`):
- the backbone builder `cream` (config `CreamBackbone`: a zoo name or architecture string and
  optional weights), a tf_keras model of the network's feature maps (cream_tf.applications.features
  built of tf_keras layers, the layer kit of cream_tf.twin) whose `output_specs` are the levels
  Model Garden's decoders read;
- `retinanet_cream_coco`: Model Garden's RetinaNet COCO recipe (`retinanet_resnetfpn_coco`: 640x640,
  FPN levels 3-7, focal loss, SGD with a step schedule over 72 epochs) with a Cream backbone;
- `retinanet_cream_demo`, `retinanet_mobilenetv3large_demo` and `retinanet_mobilenetv3small_demo`:
  one small recipe (CPU-sized) for the demo set (cream_tf.detection.demo_data), with a Cream
  backbone and with Model Garden's own MobileNetV3-Large and -Small, trained the same way.

Training, evaluation (COCO AP with Model Garden's evaluator), export and TFLite conversion are
Model Garden's own drivers: `python -m cream_tf.detection` runs them with these registered.

Norm settings: the backbone keeps the BatchNorm it is searched and trained with (epsilon 1e-5,
momentum 0.9, PyTorch's), so that trained weights give the same outputs; it reads
`norm_activation.use_sync_bn`. The task's L2 decay (`losses.l2_weight_decay`) reaches every
convolution kernel but the depthwise ones, as Model Garden's MobileNet does by default.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import tf_keras
from official.core import config_definitions as cfg
from official.core import exp_factory
from official.modeling import hyperparams, optimization
from official.vision.configs import backbones, decoders, retinanet
from official.vision.modeling.backbones import factory

from cream_tf import applications
from cream_tf.twin import TF_KERAS

DEMO_DIR = "runs/detection/data"  # the README writes the demo set here (move: input_path and annotation_file)


@dataclasses.dataclass
class CreamBackbone(hyperparams.Config):
    """model: a zoo name (cream_14 ... cream_604) or an architecture string. weights: '' (fresh),
    a zoo entry folder, a `.keras` file or an official checkpoint. min_level, max_level: the
    feature levels returned (0: the network's first and last; cream_tf.applications.endpoints)."""

    model: str = "cream_287"
    weights: str = ""
    min_level: int = 0
    max_level: int = 0


@dataclasses.dataclass
class Backbone(backbones.Backbone):
    """Model Garden's backbone choice with `cream` added."""

    type: str | None = "cream"
    cream: CreamBackbone = dataclasses.field(default_factory=CreamBackbone)


class CreamFeatures(tf_keras.Model):
    """A Cream network's feature maps as a tf_keras functional model: a dict of level -> map, the
    levels `output_specs` lists (Model Garden's decoders read each of them)."""

    def __init__(
        self,
        model,
        input_specs=None,
        weights=None,
        min_level=None,
        max_level=None,
        use_sync_bn=False,
        l2_regularizer=None,
        **kwargs,
    ):
        shape = tuple(input_specs.shape[1:]) if input_specs is not None else (None, None, 3)
        kit = TF_KERAS
        if use_sync_bn:
            kit = dataclasses.replace(
                kit, batch_norm=functools.partial(tf_keras.layers.BatchNormalization, synchronized=True)
            )
        network = applications.features(model, weights or None, shape, min_level, max_level, kit=kit)
        levels = {key: output for key, output in network.output.items() if key != "last"}
        super().__init__(inputs=network.inputs, outputs=levels, name=kwargs.pop("name", "cream"), **kwargs)
        self._output_specs = {key: output.shape for key, output in levels.items()}
        if l2_regularizer is not None:
            for layer in self.layers:
                if type(layer) is tf_keras.layers.Conv2D:
                    self.add_loss(functools.partial(l2_regularizer, layer.kernel))

    @property
    def output_specs(self):
        """Level -> the shape of its map, what Model Garden's decoders read."""
        return self._output_specs


@factory.register_backbone_builder("cream")
def build_cream(input_specs, backbone_config, norm_activation_config, l2_regularizer=None) -> tf_keras.Model:
    """Model Garden's builder signature (official.vision.modeling.backbones.factory)."""
    if backbone_config.type != "cream":
        raise ValueError(f"backbone type {backbone_config.type!r} reached the cream builder; valid is 'cream'.")
    config = backbone_config.get()
    return CreamFeatures(
        config.model,
        input_specs,
        config.weights,
        config.min_level or None,
        config.max_level or None,
        norm_activation_config.use_sync_bn,
        l2_regularizer,
    )


def cream_backbone(model: str = "cream_287", weights: str = "") -> Backbone:
    return Backbone(type="cream", cream=CreamBackbone(model=model, weights=weights))


@exp_factory.register_config_factory("retinanet_cream_coco")
def retinanet_cream_coco() -> cfg.ExperimentConfig:
    """Model Garden's RetinaNet COCO recipe with a Cream backbone (cream_287, fresh weights:
    give ImageNet weights with task.model.backbone.cream.weights=PATH). Float32 (the recipe's
    bfloat16 is for TPUs)."""
    config = retinanet.retinanet_resnetfpn_coco()
    config.task.model.backbone = cream_backbone()
    config.task.init_checkpoint = None  # the recipe's is a ResNet-50's; the backbone loads its own
    config.runtime.mixed_precision_dtype = "float32"
    config.task.train_data.dtype = config.task.validation_data.dtype = "float32"
    return config


def _demo(backbone) -> cfg.ExperimentConfig:
    """RetinaNet on the demo set, sized for a CPU: 128x128 input (the 256-pixel canvases resized),
    levels 3-5 with anchors of 2 strides (its items are 16-43 pixels there), a light FPN and head
    of separable convolutions, Adam with cosine decay over 1500 steps of 16 images."""
    size, batch, steps = 128, 16, 1500
    config = retinanet.retinanet_resnetfpn_coco()
    task = config.task
    task.init_checkpoint = None
    # The COCO evaluator reads the ground truth from the instances file demo_data writes (Model
    # Garden 2.20 cannot take it from the records under NumPy 2: its parser's num_detections has a shape of [1]).
    task.annotation_file = os.path.join(DEMO_DIR, "instances_val.json")
    task.model = retinanet.RetinaNet(
        num_classes=11,  # 10 Fashion-MNIST classes and background (0)
        input_size=[size, size, 3],
        min_level=3,
        max_level=5,
        backbone=backbone,
        decoder=decoders.Decoder(type="fpn", fpn=decoders.FPN(num_filters=64, use_separable_conv=True)),
        head=retinanet.RetinaNetHead(num_convs=2, num_filters=64, use_separable_conv=True),
        anchor=retinanet.Anchor(anchor_size=2.0),
    )
    task.losses.l2_weight_decay = 4e-5
    for data, split, training in ((task.train_data, "train", True), (task.validation_data, "val", False)):
        data.input_path = os.path.join(DEMO_DIR, f"{split}-*")
        data.global_batch_size = batch if training else 8
        data.dtype = "float32"
        data.is_training = training
        data.shuffle_buffer_size = 1000
    task.train_data.parser = retinanet.Parser(aug_rand_hflip=True, aug_scale_min=0.8, aug_scale_max=1.2)
    config.runtime.mixed_precision_dtype = "float32"
    config.trainer = cfg.TrainerConfig(
        train_steps=steps,
        validation_steps=25,  # the 200 validation images
        validation_interval=500,
        steps_per_loop=100,
        summary_interval=100,
        checkpoint_interval=500,
        optimizer_config=optimization.OptimizationConfig(
            {
                "optimizer": {"type": "adam"},
                "learning_rate": {"type": "cosine", "cosine": {"initial_learning_rate": 3e-3, "decay_steps": steps}},
                "warmup": {"type": "linear", "linear": {"warmup_steps": 200, "warmup_learning_rate": 1e-4}},
            }
        ),
    )
    return config


@exp_factory.register_config_factory("retinanet_cream_demo")
def retinanet_cream_demo() -> cfg.ExperimentConfig:
    """The demo recipe with cream_43 (fresh weights)."""
    return _demo(cream_backbone("cream_43"))


def _mobilenet(model_id: str) -> cfg.ExperimentConfig:
    return _demo(Backbone(type="mobilenet", mobilenet=backbones.MobileNet(model_id=model_id)))


@exp_factory.register_config_factory("retinanet_mobilenetv3small_demo")
def retinanet_mobilenetv3small_demo() -> cfg.ExperimentConfig:
    """The demo recipe with Model Garden's MobileNetV3-Small (fresh weights): about a quarter of
    cream_43's multiply-adds (the space's smallest path has more than MobileNetV3-Small)."""
    return _mobilenet("MobileNetV3Small")


@exp_factory.register_config_factory("retinanet_mobilenetv3large_demo")
def retinanet_mobilenetv3large_demo() -> cfg.ExperimentConfig:
    """The demo recipe with Model Garden's MobileNetV3-Large (fresh weights): about cream_43's
    multiply-adds at the same input size."""
    return _mobilenet("MobileNetV3Large")


__all__ = ["Backbone", "CreamBackbone", "CreamFeatures", "build_cream", "retinanet_cream_coco"]
