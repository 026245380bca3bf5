"""Checkpoints: how a run's variables are stored (named lists of `Slots`), and reading a
trained model back from a retrain's checkpoint as a portable Keras model."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import tensorflow as tf

from cream_tf import config as config_lib
from cream_tf import data
from cream_tf.arch import Arch
from cream_tf.batchnorm import Recalibrator, batch_norms
from cream_tf.childnet import build_child
from cream_tf.config import RetrainConfig
from cream_tf.folders import ARCH_FILE, CHECKPOINTS, CONFIG_FILE


class Slots(tf.Module):
    """Makes a list of variables one checkpointable object; runs checkpoint their variables as
    named lists of these, in creation order (Keras 3 models do not hand their weights to
    tf.train.Checkpoint themselves)."""

    def __init__(self, variables):
        super().__init__()
        self.variables_list = list(variables)


def portable_model(arch: Arch, weights: list, calibration=None) -> keras.Model:
    """A float32 child net of Keras' own layers carrying `weights` (those of a child net of
    `arch`, fused BatchNorm or not); with `calibration` (image batches) its BatchNorm statistics
    are first recomputed on them (cream_tf.batchnorm)."""
    if calibration is not None:
        fused = build_child(arch, name="cream_fused", fused_bn=True)
        fused.set_weights(weights)
        Recalibrator(lambda images: fused(images, training=True), batch_norms(fused.layers)).recalibrate(calibration)
        weights = fused.get_weights()
    model = build_child(arch, name="cream")
    model.set_weights(weights)
    return model


def ema_calibration(config: RetrainConfig):
    """The training batches an EMA copy's statistics are recomputed on, or None (see
    RecipeConfig.ema_recalibrate_batches)."""
    batches = config.train.ema_recalibrate_batches
    if config.train.ema_decay <= 0 or not batches:
        return None
    return data.load(config.data, config.train.train_split, training=False).take(batches)


def run_of(source) -> tuple[Path, str | None]:
    """(the run's model_dir, the checkpoint to read) of a run's model_dir (its latest checkpoint,
    None when it has none) or of one checkpoint in it (model_dir/checkpoints/ckpt-N)."""
    path = Path(source)
    if Path(str(path) + ".index").is_file():
        return path.parent.parent, str(path)
    return path, tf.train.latest_checkpoint(str(path / CHECKPOINTS)) if (path / CHECKPOINTS).is_dir() else None


def load_trained(source) -> tuple[keras.Model, RetrainConfig]:
    """The evaluated weights (EMA when on) of a retrain model_dir, or of one checkpoint in it
    (model_dir/checkpoints/ckpt-N), as a float32 Keras model; with the run's configuration."""
    model_dir, checkpoint = run_of(source)
    if not checkpoint or not (model_dir / ARCH_FILE).is_file():
        raise ValueError(
            f"{str(source)!r} is not a retrain model_dir with a checkpoint (it needs {ARCH_FILE} and "
            f"{CHECKPOINTS}/ckpt-N) nor such a checkpoint; valid are those, a .keras file, a zoo "
            "entry folder or a .tflite file."
        )
    config = config_lib.load(RetrainConfig, str(model_dir / CONFIG_FILE))
    arch = Arch.from_json(json.loads((model_dir / ARCH_FILE).read_text()))
    model = build_child(arch, name="cream")
    # The retrain checkpoints every weight list by name (cream_tf.retrain.RetrainRun.checkpoint_variables).
    key = "ema" if config.train.ema_decay > 0 else "model"
    restored = tf.train.Checkpoint(**{key: Slots(model.weights)}).restore(checkpoint)
    restored.expect_partial().assert_existing_objects_matched()
    return portable_model(arch, model.get_weights(), ema_calibration(config)), config
