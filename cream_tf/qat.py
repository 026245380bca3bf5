"""`python main.py --mode=qat`: quantization-aware fine-tuning of an entry's float model, ending in an
entry folder whose `model_int8.tflite` comes from the QAT model.

TensorFlow Model Optimization (TFMOT) inserts fake quantization where TFLite's int8 kernels
quantize: per-channel int8 convolution weights, and each activation after the op TFLite fuses it
into (convolutions with their BatchNorm, the SE reduce conv with its ReLU). It works on tf_keras
models, so the entry's network is rebuilt as its tf_keras twin (cream_tf.twin). Its default 8-bit
scheme has no QuantizeConfig for `Multiply` (the SE gate), the twin's hard sigmoid (`Activation`
of relu6(x + 3), `Rescaling` by 1/6) nor its `Swish`; `OutputQuantizeConfig` quantizes their
outputs, each `Swish` also rounds its sigmoid as TFLite's LOGISTIC does, and the SE expand conv
keeps its output float (`KernelOnlyQuantizeConfig`), so the int8 graph is the one post-training
quantization makes, which XNNPACK takes whole. Pooling, Add and Dense keep TFMOT's own configs.

The result is an entry folder (cream_tf.folders) holding the float files it started from, the
QAT int8 file as model_int8.tflite, the post-training one (same calibration images) as
model_int8_ptq.tflite for comparison, and metadata.json with the method, the steps and every
format's top-1 on the same images. The run's model_dir holds checkpoints, TensorBoard and the
config, as a retrain's does; a new run there resumes.

Example (needs an entry written with data: a retrain's, or --mode=export with --config_file):

    from cream_tf import qat
    from cream_tf.config import RetrainConfig
    result = qat.QatRun(RetrainConfig(), "runs/retrain/entry", "runs/qat", "runs/qat/entry").run()
    result["accuracy"]["top1"]     # keras, tflite_float32, tflite_int8 (QAT), tflite_int8_ptq, qat_fake_quant
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras
from tensorflow.lite.tools import flatbuffer_utils

from cream_tf import atomic, data, evaluate, export, folders, twin
from cream_tf.arch import Arch
from cream_tf.callbacks import Progress
from cream_tf.config import RANGE_STATISTICS, DataConfig, RetrainConfig, from_dict
from cream_tf.keras_internals import FitModel
from cream_tf.training import TrainingRun

quantize = tfmot.quantization.keras
TWIN_CHECK_IMAGES = 8  # test images on which the twin must give the float model's outputs


class OutputQuantizeConfig(quantize.QuantizeConfig):
    """Quantizes a layer's output only, 8-bit asymmetric with moving-average ranges: what TFLite
    does after an int8 MUL or a composite activation (no weights, nothing fused before it)."""

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [
            quantize.quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False, narrow_range=False)
        ]

    def get_config(self):
        return {}


class KernelOnlyQuantizeConfig(OutputQuantizeConfig):
    """Per-channel int8 kernel, output left to the next layer: the SE expand conv, whose output
    enters the hard sigmoid. TFLite folds the sigmoid's + 3 into the conv's bias and its relu6
    into the conv, as post-training quantization does; a fake quantization between them (TFMOT's
    default) would keep a separate ADD that XNNPACK does not take, splitting the graph."""

    def __init__(self):
        self.quantizer = quantize.quantizers.LastValueQuantizer(
            num_bits=8, per_axis=True, symmetric=True, narrow_range=True
        )

    def get_weights_and_quantizers(self, layer):
        return [(layer.kernel, self.quantizer)]

    def set_quantize_weights(self, layer, quantize_weights):
        (layer.kernel,) = quantize_weights

    def get_output_quantizers(self, layer):
        return []


def _own_config(layer):
    if isinstance(layer, (tf_keras.layers.Multiply, twin.Swish)):
        return OutputQuantizeConfig()
    # The hard sigmoid's relu6(x + 3) and hard-swish: functions of ours that TFMOT's registry does not know.
    ours = isinstance(layer, tf_keras.layers.Activation) and layer.activation in (twin.shifted_relu6, twin.hard_swish)
    if ours or isinstance(layer, tf_keras.layers.Rescaling):
        return OutputQuantizeConfig()
    if isinstance(layer, tf_keras.layers.Conv2D) and layer.name.endswith("_se_conv_expand"):
        return KernelOnlyQuantizeConfig()
    return None


def quantize_model(model: tf_keras.Model) -> tf_keras.Model:
    """The QAT model of a twin: fake quantization as TFLite's int8 kernels quantize, same weights."""

    def annotate(layer):
        config = layer.get_config()
        if isinstance(layer, twin.Swish):
            config["rounded_gate"] = True
        clone = layer.__class__.from_config(config)
        return quantize.quantize_annotate_layer(clone, _own_config(layer))

    with quantize.quantize_scope(twin.CUSTOM_OBJECTS):
        annotated = tf_keras.models.clone_model(model, clone_function=annotate)
        annotated.set_weights(model.get_weights())
    own = {"OutputQuantizeConfig": OutputQuantizeConfig, "KernelOnlyQuantizeConfig": KernelOnlyQuantizeConfig}
    with quantize.quantize_scope({**twin.CUSTOM_OBJECTS, **own}):
        return quantize.quantize_apply(annotated)


_RANGE_VARIABLES = ("quantize_layer", "output", "post_activation")  # activation ranges; kernels' are set per step


def _activation_ranges(layer) -> dict[str, dict[str, tf.Variable]]:
    """A QAT layer's activation range variables: {kind: {"min": variable, "max": variable}}."""
    found = {}
    for weight in layer.weights:
        kind, _, bound = weight.name.split("/")[-1].split(":")[0].rpartition("_")
        kind = re.sub(r"_\d+$", "", kind)  # a second model in the process: quantize_layer_1_min
        if kind in _RANGE_VARIABLES and bound in ("min", "max"):
            found.setdefault(kind, {})[bound] = weight
    return found


def activation_range_variables(qat_model: tf_keras.Model) -> list[tf.Variable]:
    """Every activation range variable (min and max) of `qat_model`."""
    return [v for layer in qat_model.layers for bounds in _activation_ranges(layer).values() for v in bounds.values()]


def calibrate_ranges(
    qat_model: tf_keras.Model, float_model: tf_keras.Model, images, statistic: str, batch_size: int = 32
) -> None:
    """Sets every activation range of `qat_model` from the same tensor of `float_model` (its
    twin) on `images`, 0 always inside: `statistic` 'minmax' takes the min and max over all the
    images, as post-training calibration does; 'batch_mean' the mean over batches of
    `batch_size` images of each batch's min and max, the level TFMOT's moving average of batch
    extremes settles at, which one outlying image moves by its excess over the number of batches.

    TFMOT starts every range at [-6, 6] and moves it as an EMA of decay 0.999 per step: a few
    hundred steps would keep ranges far from the tensors' (clipping BatchNorm outputs beyond 6,
    wasting resolution on small ones). Started here, QAT begins where calibration is.
    """
    if statistic not in RANGE_STATISTICS:
        raise ValueError(f"statistic={statistic!r} is not valid; valid: {', '.join(RANGE_STATISTICS)}")
    pairs = []  # (min variable, max variable, tensor of the float model)
    for layer in qat_model.layers:
        for bounds in _activation_ranges(layer).values():
            inner = getattr(layer, "layer", None)
            tensor = float_model.input if inner is None else float_model.get_layer(inner.name).output
            pairs.append((bounds["min"], bounds["max"], tensor))
    probe = tf_keras.Model(float_model.input, [tensor for _, _, tensor in pairs])
    lows, highs = [], []  # [batch][tensor]
    for start in range(0, len(images), batch_size):
        outputs = probe(images[start : start + batch_size], training=False)
        lows.append([float(tf.reduce_min(t)) for t in outputs])
        highs.append([float(tf.reduce_max(t)) for t in outputs])
    if statistic == "minmax":
        low, high = np.min(lows, axis=0), np.max(highs, axis=0)
    else:
        low, high = np.mean(lows, axis=0), np.mean(highs, axis=0)
    for (min_var, max_var, _), lo, hi in zip(pairs, low, high):
        min_var.assign(min(lo, 0.0))
        max_var.assign(max(hi, 0.0))


def graph_ops(tflite: bytes) -> list[tuple[str, list[str]]]:
    """Every op of a TFLite file (as written, before any delegate) with the types of its tensors."""
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))
    ops = []
    for graph in model.subgraphs:
        for op in graph.operators:
            tensors = [i for i in [*op.inputs, *op.outputs] if i >= 0]
            types = [flatbuffer_utils.type_to_name(graph.tensors[i].type) for i in tensors]
            ops.append((flatbuffer_utils.opcode_to_name(model, op.opcodeIndex), types))
    return ops


def float_ops(tflite: bytes) -> list[str]:
    """The ops that touch a tensor of a floating type: none in an all-int8 file."""
    return [f"{name}{types}" for name, types in graph_ops(tflite) if any(t.startswith("FLOAT") for t in types)]


def read_entry(path) -> tuple[dict, DataConfig]:
    """An entry folder's metadata and the data it was measured on; ValueError for anything else."""
    path = Path(path)
    meta_file = path / folders.METADATA_FILE
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    if not (path / folders.KERAS_FILE).is_file() or "architecture" not in meta:
        raise ValueError(
            f"--model={str(path)!r} is not a cream_tf entry folder (it needs {folders.KERAS_FILE} and a "
            f"{folders.METADATA_FILE} with the architecture); valid is a folder that retrain or export wrote."
        )
    if not meta.get("data"):
        raise ValueError(
            f"The entry {str(path)!r} has no data settings ('data' in {folders.METADATA_FILE}), so there is "
            "nothing to fine-tune on; valid is an entry written with data: a retrain's, or --mode=export "
            "with --config_file."
        )
    return meta, from_dict(DataConfig, meta["data"], "data")


class QatModel(FitModel):
    """One QAT step on the tf_keras model inside Keras 3's `fit` (the run skeleton's).

    The target of each image mixes the float model's softmax (weight `distill`) with its smoothed
    label: what the fine-tune should keep is the float model's function, which its labels alone
    only approximate."""

    def __init__(
        self, model, teacher, optimizer, num_classes: int, label_smoothing: float, distill: float, fixed: tuple = ()
    ):
        super().__init__(name="qat")
        self.model, self.teacher, self.qat_optimizer = model, teacher, optimizer
        self.num_classes, self.label_smoothing, self.distill = num_classes, label_smoothing, distill
        self.fixed = list(fixed)  # variables the step must leave as they are (activation ranges)
        self.built = True

    def train_step(self, batch):
        images, labels, _ = keras.utils.unpack_x_y_sample_weight(batch)
        labels = labels if labels.shape.rank == 2 else tf.one_hot(labels, self.num_classes)
        smoothed = labels * (1 - self.label_smoothing) + self.label_smoothing / self.num_classes
        targets = (1 - self.distill) * smoothed
        if self.distill:
            targets += self.distill * tf.nn.softmax(self.teacher(images, training=False))
        variables = self.model.trainable_variables
        kept = [v.read_value() for v in self.fixed]  # read before the forward moves them (program order)
        with tf.GradientTape() as tape:
            logits = self.model(images, training=True)
            loss = tf.reduce_mean(tf.keras.losses.categorical_crossentropy(targets, logits, from_logits=True))
        self.qat_optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        for v, value in zip(self.fixed, kept):
            v.assign(value)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1), tf.argmax(labels, -1)), tf.float32))
        return self.step_outputs({"loss": loss, "correct": correct})


class QatRun(TrainingRun):
    """QAT of the entry at `entry` in `model_dir` (resumed from its checkpoint), written to `output_dir`."""

    RESULT_FILE = folders.QAT_RESULT_FILE
    REPORTING_KEYS = TrainingRun.REPORTING_KEYS + ("export.", "train.", "qat.enabled")
    SUMMED = ("loss", "correct")

    def __init__(self, config: RetrainConfig, entry, model_dir, output_dir, *, overwrite: bool = False):
        config.qat.validate()
        self.entry, self.output_dir, self.overwrite = Path(entry), Path(output_dir), overwrite
        self.metadata, data_config = read_entry(entry)
        atomic.check_folder(self.output_dir, "output_dir")
        if self.output_dir.exists() and not overwrite:
            raise ValueError(f"Output folder {str(output_dir)!r} already exists; choose a new one or pass --overwrite.")
        self.qat_config = qat = config.qat
        self.config = RetrainConfig(data=data_config, export=config.export, qat=qat)  # what config.yaml records
        self.data_config = data_config
        batch = qat.batch_size or data_config.batch_size
        super().__init__(
            model_dir,
            tf.distribute.get_strategy(),  # one process, one device: tf_keras models stay outside Keras 3's strategies
            seed=qat.seed,
            deterministic=False,
            data_config=dataclasses.replace(data_config, batch_size=batch),
            split=qat.train_split,
            steps_per_epoch=qat.steps,
            epochs=1,
            checkpointing=qat,
        )
        self.arch = Arch.from_json(self.metadata["architecture"])
        self.float_model = keras.models.load_model(self.entry / folders.KERAS_FILE, compile=False)
        check_images = data.sample_images(data_config, "test", TWIN_CHECK_IMAGES)
        float_twin = twin.twin_of(self.float_model, self.arch, check_images)
        count = min(config.export.calibration_images, data.num_examples(data_config, "train"))
        self.calibration = data.sample_images(data_config, "train", count)
        self.model = quantize_model(float_twin)
        calibrate_ranges(self.model, float_twin, self.calibration, qat.range_statistic)  # resumed: restored
        if qat.freeze_batchnorm:
            for layer in self.model.layers:
                inner = getattr(layer, "layer", layer)
                if isinstance(inner, tf_keras.layers.BatchNormalization):
                    # tf_keras: a frozen BatchNorm runs on its moving statistics and keeps them. Its
                    # scale and offset stay in the QAT model's trainable_variables (TFMOT's wrapper
                    # lists them) and train with the weights, which measured better than keeping
                    # them too (benchmarks/RESULTS.md); tests/test_qat.py checks both.
                    inner.trainable = False
        schedule = tf_keras.optimizers.schedules.CosineDecay(qat.lr, qat.steps)
        self.optimizer = tf_keras.optimizers.SGD(schedule, momentum=qat.momentum, nesterov=True)
        self.optimizer.build(self.model.trainable_variables)
        fixed = activation_range_variables(self.model) if qat.freeze_ranges else ()
        self.fit_model = QatModel(
            self.model, float_twin, self.optimizer, self.arch.num_classes, qat.label_smoothing, qat.distill, fixed
        )
        self.fit_model.compile(jit_compile=False)

    def checkpoint_variables(self) -> dict[str, list]:
        return {"model": self.model.weights, "optimizer": self.optimizer.variables}

    def callbacks(self):
        batch = self.data_config.batch_size
        return [Progress(self, lambda logs: [("loss", logs["loss"]), ("top1", 100.0 * logs["correct"] / batch)])]

    def end_epoch(self, logs: dict) -> None:
        steps, batch = self.steps_per_epoch, self.data_config.batch_size
        self.scalars(
            steps,
            {"qat/loss": self.sums["loss"] / steps, "qat/train_top1": 100 * self.sums["correct"] / (steps * batch)},
        )

    def finish(self) -> dict:
        export_config, data_config = self.config.export, self.config.data
        calibration, count = self.calibration, len(self.calibration)
        qat_file = export.to_tflite_int8(self.model, calibration)
        left = float_ops(qat_file)
        if left:
            raise RuntimeError(f"The QAT model converted with float ops left: {left[:5]}; nothing was written.")
        metadata = dict.fromkeys(export.ENTRY_KEYS) | self.metadata | {"format_version": 2, "produced_by": "qat"}
        with atomic.staged_folder(self.output_dir, overwrite=self.overwrite) as staging:
            for name in (folders.KERAS_FILE, folders.TFLITE_FLOAT_FILE, folders.LABELS_FILE):
                if (self.entry / name).is_file():
                    shutil.copy2(self.entry / name, staging / name)
            shutil.copytree(self.entry / folders.SAVED_MODEL_DIR, staging / folders.SAVED_MODEL_DIR)
            ptq = export.to_tflite_int8(staging / folders.SAVED_MODEL_DIR, calibration)
            atomic.write_bytes(staging / folders.TFLITE_INT8_PTQ_FILE, ptq)
            atomic.write_bytes(staging / folders.TFLITE_INT8_FILE, qat_file)
            normalization = (metadata["preprocessing"]["mean"], metadata["preprocessing"]["std"])
            int8 = export.int8_metadata(staging / folders.TFLITE_INT8_FILE, "train", count, normalization)
            int8["scheme"] = (
                "quantization-aware training with TFMOT, then full-integer conversion (int8 weights and activations)"
            )
            files = {
                **metadata["files"],
                "tflite_int8": folders.TFLITE_INT8_FILE,
                "tflite_int8_ptq": folders.TFLITE_INT8_PTQ_FILE,
            }
            accuracy = export.measure_formats(
                staging,
                files,
                data_config,
                export_config.eval_split,
                export_config.eval_batches,
                normalization,
                extra={"qat_fake_quant": evaluate.KerasPredictor(self.model, "qat_fake_quant")},
            )
            metadata.update(
                files=files,
                tflite_int8=int8,
                quantization={
                    "method": "qat",
                    "steps": self.steps_per_epoch,
                    "from_entry": str(self.entry),
                    "model_dir": str(self.model_dir),
                    "settings": vars(self.qat_config),
                    "ptq_file": folders.TFLITE_INT8_PTQ_FILE,
                },
                accuracy=accuracy,
            )
            labels = metadata.get("labels")
            metadata["tflite_metadata"] = export.add_tflite_metadata(
                staging, metadata, self.float_model.name, self.arch, labels
            )
            atomic.write_json(staging / folders.METADATA_FILE, metadata)
        return {"entry": str(self.output_dir), "steps": self.steps_per_epoch, "accuracy": accuracy}
