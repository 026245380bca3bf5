"""`python main.py --mode=retrain`: one architecture trained with the paper's recipe, then exported.

The recipe (RecipeConfig's defaults, from the official retrain settings): TF-style RMSprop
(rho 0.9, momentum 0.9, epsilon 1e-3), lr 0.064 per 1024 images scaled linearly with the batch,
3 warm-up epochs from 1e-6, x0.973 every 2.4 epochs, L2 weight decay 1e-5 on kernels only,
dropout 0.2, label smoothing 0.1, an EMA of the weights (0.9999) that is what gets evaluated
and exported, float16 compute on GPUs. Augmentation (RandAugment, random erasing, mixup,
cutmix) is DataConfig's, applied by cream_tf.data to the training split only.

Layout of `model_dir` (written by the chief worker):

    config.yaml           the resolved configuration
    arch.json             the architecture trained (the data sets its input size, channels, classes)
    checkpoints/          model, optimizer, EMA copy and epoch; a new run in model_dir resumes here
    history.json          per epoch: loss, training top-1, learning rate, eval top-1, seconds
    tensorboard/          the same as scalars
    entry/                the zoo entry folder (unless output_dir is given)
    retrain_result.json   figures per exported format, timings, where the entry is

Example:

    >>> from cream_tf import config as config_lib
    >>> from cream_tf.arch import Arch
    >>> config = config_lib.load(config_lib.RetrainConfig, "configs/retrain/fashion_mnist.yaml")
    >>> arch = Arch.parse("[0][0][0][0][0]@28;in=1;classes=10;stem=16/1")
    >>> result = Retrainer(config, arch, "runs/retrain").run()
    >>> result["accuracy"]["top1"]      # measured per format on the test split
    {'keras': 92.5, 'tflite_float32': 92.5, 'tflite_int8': 92.3}
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import keras
import tensorflow as tf
from absl import logging

from cream_tf import atomic, data, export, zoo
from cream_tf import config as config_lib
from cream_tf.arch import Arch
from cream_tf.childnet import build_child
from cream_tf.config import RetrainConfig
from cream_tf.search.optimizer import decays
from cream_tf.search.run import is_chief, make_strategy
from cream_tf.search.selection import recalibrate_batchnorm, top1

OPTIMIZERS = ("rmsprop", "sgd")
SCHEDULES = ("step", "cosine")
TRAIN_SPLITS = ("train", "train_full")
CHECKPOINTS = "checkpoints"
ARCH_FILE = "arch.json"


class TFRMSprop(keras.optimizers.RMSprop):
    """RMSprop as TF1's RMSPropOptimizer and timm's RMSpropTF (what the paper trained with).

    Keras 3's update already has their form, checked in keras/src/optimizers/rmsprop.py:
    ms = rho * ms + (1 - rho) * g^2, mom = momentum * mom + lr * g / sqrt(ms + epsilon),
    w -= mom. Epsilon sits INSIDE the square root, as in TF1 and RMSpropTF (PyTorch's own
    RMSprop is the one that adds it outside), and the learning rate inside the momentum. What
    differs is the start: Keras starts the mean square at zero, TF1 and timm at one. From zero,
    the first update is lr * g / sqrt(0.1 g^2 + 1e-3), about 3.2 lr per weight whatever the
    gradient's size; from one it is about lr * g.
    """

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        for velocity in self._velocities:
            velocity.assign(tf.ones(velocity.shape, velocity.dtype))


class RecipeSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to the peak, then step decay (counted from step 0, as timm) or a cosine."""

    def __init__(self, recipe, batch_size: int, steps_per_epoch: int):
        self.peak = recipe.lr * batch_size / recipe.lr_batch_size
        self.warmup_lr = recipe.warmup_lr
        self.warmup_steps = recipe.warmup_epochs * steps_per_epoch
        self.total_steps = recipe.epochs * steps_per_epoch
        self.decay_steps = recipe.decay_epochs * steps_per_epoch
        self.decay_rate = recipe.decay_rate
        self.kind = recipe.lr_schedule

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warming = self.warmup_lr + (self.peak - self.warmup_lr) * step / max(self.warmup_steps, 1.0)
        if self.kind == "step":
            after = self.peak * self.decay_rate ** tf.floor(step / self.decay_steps)
        else:
            progress = tf.clip_by_value((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1.0),
                                        0.0, 1.0)
            after = 0.5 * self.peak * (1.0 + tf.cos(math.pi * progress))
        return tf.where(step < self.warmup_steps, warming, after)


def check_config(config: RetrainConfig) -> None:
    """Everything that can be checked before any data is read, with what would be valid."""
    recipe = config.train
    sections = {"train": config.train, "export": config.export}

    def value(key):
        section, name = key.split(".")
        return getattr(sections[section], name)

    def require(condition, key, valid):
        if not condition(value(key)):
            raise ValueError(f"{key}={value(key)!r} is not valid; valid: {valid}.")

    require(lambda v: v in OPTIMIZERS, "train.optimizer", ", ".join(OPTIMIZERS))
    require(lambda v: v in SCHEDULES, "train.lr_schedule", ", ".join(SCHEDULES))
    require(lambda v: v in TRAIN_SPLITS, "train.train_split", ", ".join(TRAIN_SPLITS))
    for key in ("train.eval_split", "export.eval_split"):
        require(lambda v: v in data.SPLITS, key, ", ".join(data.SPLITS))
    if recipe.train_split == "train_full":
        require(lambda v: v == "test", "train.eval_split",
                "'test' when train.train_split is 'train_full' (the other splits are trained on)")
    for key in ("epochs", "lr_batch_size", "checkpoint_every_epochs"):
        require(lambda v: v >= 1, f"train.{key}", "an integer >= 1")
    for key in ("steps_per_epoch", "eval_every_epochs", "eval_batches", "ema_recalibrate_batches"):
        require(lambda v: v >= 0, f"train.{key}", "0 or more")
    for key in ("lr", "decay_epochs", "rmsprop_epsilon"):
        require(lambda v: v > 0, f"train.{key}", "a number > 0")
    for key in ("warmup_epochs", "warmup_lr", "weight_decay", "momentum"):
        require(lambda v: v >= 0, f"train.{key}", "a number >= 0")
    require(lambda v: 0 < v <= 1, "train.decay_rate", "a factor in (0, 1]")
    for key in ("ema_decay", "label_smoothing", "rmsprop_rho"):
        require(lambda v: 0 <= v < 1, f"train.{key}", "a number in [0, 1)")
    require(lambda v: v >= 1, "export.calibration_images", "an integer >= 1")
    require(lambda v: v >= 0, "export.eval_batches", "0 (the whole split) or more")


def fit_to_data(arch: Arch, config: RetrainConfig) -> Arch:
    """The architecture's blocks and stem with the data's input and the recipe's regularization."""
    d, recipe = config.data, config.train
    fitted = arch.replace(input_size=d.image_size, in_channels=d.channels, num_classes=d.num_classes,
                          dropout=recipe.dropout, drop_path=recipe.drop_path)
    changed = [f"{name} {getattr(arch, name)} -> {getattr(fitted, name)}"
               for name in ("input_size", "in_channels", "num_classes") if getattr(arch, name) != getattr(fitted, name)]
    if changed:
        logging.warning("The data sets the architecture's %s.", ", ".join(changed))
    return fitted


def arch_from(*, search_result: str | None = None, zoo_name: str | None = None, arch: str | None = None,
              model_dir=None) -> Arch:
    """The architecture to retrain from exactly one source; with none, the one `model_dir` was trained on."""
    given = [name for name, value in (("search_result", search_result), ("zoo", zoo_name), ("arch", arch)) if value]
    if len(given) > 1:
        raise ValueError(f"Give one architecture source; got {', '.join('--' + g for g in given)}.")
    if search_result:
        path = Path(search_result)
        if not path.is_file():
            raise ValueError(f"search_result={search_result!r} is not a file; valid is the search_result.json "
                             "a search wrote in its model_dir.")
        winner = json.loads(path.read_text()).get("winner")
        if not winner or "arch" not in winner:
            raise ValueError(f"{search_result} has no winner (\"winner\": {winner!r}); valid is a search_result.json "
                             "of a search whose board was not empty.")
        return Arch.parse(winner["arch"])
    if zoo_name:
        return zoo.arch_of(zoo_name)
    if arch:
        return Arch.parse(arch)
    saved = Path(model_dir or "") / ARCH_FILE
    if model_dir and saved.is_file():
        return Arch.from_json(json.loads(saved.read_text()))
    raise ValueError(f"No architecture: give --search_result=FILE, --zoo=NAME (one of {', '.join(zoo.names())}) "
                     f"or --arch=STRING, or a --model_dir holding {ARCH_FILE} from an earlier run.")


@contextlib.contextmanager
def dtype_policy(name: str):
    """Builds models under a dtype policy, then puts the previous one back (it is global)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


class Retrainer:
    """One retrain run in `model_dir`; `run()` resumes from the latest checkpoint there.

    Args:
      weights: a `.keras` file or zoo entry folder to start from (e.g. a search's
        model_dir/zoo/board_NN), else fresh weights.
      output_dir: where the entry folder goes (default model_dir/entry, replaced on every run);
        an existing output_dir is replaced only with `overwrite`.
    """

    def __init__(self, config: RetrainConfig, arch: Arch, model_dir, *, weights=None, output_dir=None,
                 overwrite: bool = False, strategy: tf.distribute.Strategy | None = None):
        check_config(config)
        self.config, self.recipe = config, config.train
        self.model_dir = Path(model_dir)
        self.arch = fit_to_data(arch, config)
        self._check_same_arch()
        self.weights = weights
        self.output_dir = Path(output_dir) if output_dir else self.model_dir / "entry"
        self.overwrite = overwrite or not output_dir
        self.strategy = strategy or make_strategy()
        if self.recipe.deterministic:
            tf.config.experimental.enable_op_determinism()
        keras.utils.set_random_seed(self.recipe.seed)
        batch = config.data.batch_size
        if batch % self.strategy.num_replicas_in_sync:
            raise ValueError(f"data.batch_size={batch} does not split evenly over {self.strategy.num_replicas_in_sync} "
                             "replicas; valid are multiples of the replica count.")
        # The data is checked (present, labels in range) before any model is built.
        self.steps_per_epoch = (self.recipe.steps_per_epoch
                                or data.num_examples(config.data, self.recipe.train_split) // batch)
        if self.steps_per_epoch < 1:
            raise ValueError(f"Split {self.recipe.train_split!r} has fewer images than one batch of {batch}; "
                             "lower data.batch_size.")
        self.mixed = self.recipe.mixed_precision and bool(tf.config.list_logical_devices("GPU"))
        if self.recipe.mixed_precision and not self.mixed:
            logging.info("train.mixed_precision: no GPU, training in float32.")
        with self.strategy.scope():
            with dtype_policy("mixed_float16" if self.mixed else "float32"):
                self.model = build_child(self.arch, fused_bn=True)  # export_model() copies to Keras' BN
            if weights:
                zoo.load_weights_from(self.model, weights)
            self.ema_model = None
            if self.recipe.ema_decay > 0:
                with dtype_policy("float32"):
                    self.ema_model = build_child(self.arch, name="cream_ema")
                self.ema_model.set_weights(self.model.get_weights())
            self.optimizer = self._optimizer()
            self.optimizer.build(self.model.trainable_variables)
        self.epoch_counter = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        objects = dict(model=self.model, optimizer=self.optimizer, epoch=self.epoch_counter)
        if self.ema_model is not None:
            objects["ema"] = self.ema_model
        self.checkpoint = tf.train.Checkpoint(**objects)
        self.epoch, self.history = 0, []
        self.train_step_fn = tf.function(self._distributed_train_step)

    # --- set-up -----------------------------------------------------------------------------

    def _check_same_arch(self) -> None:
        saved = self.model_dir / ARCH_FILE
        if saved.is_file():
            previous = Arch.from_json(json.loads(saved.read_text()))
            if previous != self.arch:
                raise ValueError(f"{self.model_dir} holds a run of {previous}, not {self.arch}; valid are the "
                                 "same architecture and data (to resume) or a new --model_dir.")

    def _optimizer(self) -> keras.optimizers.Optimizer:
        recipe = self.recipe
        schedule = RecipeSchedule(recipe, self.config.data.batch_size, self.steps_per_epoch)
        if recipe.optimizer == "rmsprop":
            optimizer = TFRMSprop(schedule, rho=recipe.rmsprop_rho, momentum=recipe.momentum,
                                  epsilon=recipe.rmsprop_epsilon)
        else:
            optimizer = keras.optimizers.SGD(schedule, momentum=recipe.momentum, nesterov=True)
        # Weight decay is an L2 term of the loss (see _replica_step), not Keras' decoupled kind.
        return keras.optimizers.LossScaleOptimizer(optimizer) if self.mixed else optimizer

    @property
    def is_chief(self) -> bool:
        return is_chief(self.strategy)

    @property
    def learning_rate(self) -> float:
        inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        return float(inner.learning_rate)

    # --- checkpoints ------------------------------------------------------------------------

    def save(self) -> None:
        directory = self.model_dir / CHECKPOINTS if self.is_chief else Path(
            tempfile.mkdtemp(prefix="cream-worker-checkpoint-"))  # every worker saves; the chief's copy is kept
        self.epoch_counter.assign(self.epoch)
        tf.train.CheckpointManager(self.checkpoint, str(directory), max_to_keep=2).save()
        if self.is_chief:
            atomic.write_json(self.model_dir / "history.json", self.history)
        else:
            shutil.rmtree(directory, ignore_errors=True)

    def restore(self) -> bool:
        latest = tf.train.latest_checkpoint(str(self.model_dir / CHECKPOINTS))
        if not latest:
            return False
        self.checkpoint.restore(latest).assert_existing_objects_matched()
        self.epoch = int(self.epoch_counter.numpy())
        path = self.model_dir / "history.json"
        history = json.loads(path.read_text()) if path.is_file() else []
        self.history = [row for row in history if row["epoch"] <= self.epoch]
        logging.info("Resumed from %s after epoch %d.", latest, self.epoch)
        return True

    # --- training ---------------------------------------------------------------------------

    def _replica_step(self, images, labels):
        recipe, model = self.recipe, self.model
        variables = model.trainable_variables
        decayed = [v for v, decay in zip(variables, decays(variables)) if decay]
        num_classes = self.arch.num_classes
        with tf.GradientTape() as tape:
            logits = tf.cast(model(images, training=True), tf.float32)
            # Mixup/cutmix already give soft labels; one form for both lets smoothing apply alike.
            targets = labels if labels.shape.rank == 2 else tf.one_hot(labels, num_classes)
            per_example = keras.losses.categorical_crossentropy(targets, logits, from_logits=True,
                                                                label_smoothing=recipe.label_smoothing)
            ce = tf.reduce_sum(per_example) / self.config.data.batch_size  # global mean once summed over replicas
            # Coupled L2 (grad += wd * w before the RMS scaling) as timm's RMSpropTF applies weight
            # decay; Keras' weight_decay is the decoupled AdamW kind, a different strength.
            l2 = 0.5 * recipe.weight_decay * tf.add_n([tf.reduce_sum(tf.square(v)) for v in decayed])
            loss = ce + l2 / self.strategy.num_replicas_in_sync
            scaled = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1), tf.argmax(targets, -1)), tf.float32))
        return {"loss": loss, "ce": ce, "correct": correct}

    def _distributed_train_step(self, images, labels):
        outputs = self.strategy.run(self._replica_step, args=(images, labels))
        reduced = {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in outputs.items()}
        if self.ema_model is not None:
            decay = tf.constant(self.recipe.ema_decay, tf.float32)
            if self.recipe.ema_warmup:
                step = tf.cast(self.optimizer.iterations, tf.float32)  # already counts this step
                decay = tf.minimum(decay, step / (9.0 + step))
            for average, value in zip(self.ema_model.weights, self.model.weights):
                average.assign(decay * average + (1.0 - decay) * tf.cast(value, average.dtype))
        return reduced

    def _dataset(self, epoch: int):
        config, split = self.config.data, self.recipe.train_split
        seed = self.recipe.seed * 1000 + epoch  # a resumed epoch sees the order it would have seen

        def per_worker(context):
            return data.load(config, split, training=True, repeat=True,
                             batch_size=context.get_per_replica_batch_size(config.batch_size),
                             seed=seed + 7919 * context.input_pipeline_id)

        return self.strategy.distribute_datasets_from_function(per_worker)

    def train_epoch(self) -> dict:
        progress = keras.utils.Progbar(self.steps_per_epoch, verbose=1 if self.is_chief else 0)
        sums = {"loss": 0.0, "ce": 0.0, "correct": 0.0}
        iterator = iter(self._dataset(self.epoch))
        for i in range(self.steps_per_epoch):
            images, labels = next(iterator)
            out = {k: float(v) for k, v in self.train_step_fn(images, labels).items()}
            for key in sums:
                sums[key] += out[key]
            progress.update(i + 1, [("loss", out["loss"]),
                                    ("top1", 100.0 * out["correct"] / self.config.data.batch_size)])
        steps = self.steps_per_epoch
        return {"loss": sums["loss"] / steps, "ce": sums["ce"] / steps,
                "train_top1": 100.0 * sums["correct"] / (steps * self.config.data.batch_size)}

    def export_model(self) -> keras.Model:
        """What is evaluated and exported: a float32 copy, outside any strategy, of the EMA weights
        when EMA is on (BatchNorm statistics recomputed if the recipe says so), else the weights."""
        with dtype_policy("float32"):
            model = build_child(self.arch, name="cream")
        model.set_weights((self.ema_model or self.model).get_weights())
        batches = self.recipe.ema_recalibrate_batches
        if self.ema_model is not None and batches:
            recalibrate_batchnorm(model, data.load(self.config.data, self.recipe.train_split, training=False)
                                  .take(batches))
        return model

    def evaluate(self, max_batches: int | None = None) -> float:
        dataset = data.load(self.config.data, self.recipe.eval_split, training=False)
        return top1(self.export_model(), dataset, self.recipe.eval_batches if max_batches is None else max_batches)

    def run(self) -> dict | None:
        """Trains (resuming when a checkpoint exists), evaluates, exports; returns the result."""
        start = time.time()
        if self.is_chief:
            self.model_dir.mkdir(parents=True, exist_ok=True)
            config_lib.save(self.config, self.model_dir / "config.yaml")
            atomic.write_json(self.model_dir / ARCH_FILE, self.arch.to_json())
        self.restore()
        writer = tf.summary.create_file_writer(str(self.model_dir / "tensorboard")) if self.is_chief else None
        recipe = self.recipe
        while self.epoch < recipe.epochs:
            logging.info("Epoch %d/%d", self.epoch + 1, recipe.epochs)
            began = time.time()
            row = {"epoch": self.epoch + 1, **self.train_epoch(), "lr": self.learning_rate}
            self.epoch += 1
            if recipe.eval_every_epochs and self.epoch % recipe.eval_every_epochs == 0:
                row[f"{recipe.eval_split}_top1"] = self.evaluate()
            row["seconds"] = round(time.time() - began, 1)
            self.history.append(row)
            logging.info("Epoch %d: %s", self.epoch, row)
            if writer is not None:
                with writer.as_default(step=self.epoch):
                    for key, value in row.items():
                        if key != "epoch":
                            tf.summary.scalar(f"epoch/{key}", value)
            if self.epoch % recipe.checkpoint_every_epochs == 0 or self.epoch == recipe.epochs:
                self.save()
        train_seconds = time.time() - start
        if not self.is_chief:
            return None
        result = {"arch": str(self.arch), "epochs": self.epoch, "steps_per_epoch": self.steps_per_epoch,
                  "weights_start": str(self.weights) if self.weights else "fresh",
                  "ema": self.recipe.ema_decay or None, "history": self.history}
        if self.config.export.enabled:
            entry = self.write_entry()
            metadata = json.loads((entry / export.METADATA_FILE).read_text())
            result.update(entry=str(entry), accuracy=metadata.get("accuracy"))
        else:
            result["accuracy"] = {"split": recipe.eval_split, "top1": {"keras": self.evaluate()}}
        result["timing"] = {"train_seconds": round(train_seconds, 1), "total_seconds": round(time.time() - start, 1)}
        atomic.write_json(self.model_dir / "retrain_result.json", result)
        return result

    def write_entry(self) -> Path:
        recipe = self.recipe
        which = f"EMA ({recipe.ema_decay:g}) weights" if self.ema_model is not None else "weights (EMA off)"
        if self.ema_model is not None and recipe.ema_recalibrate_batches:
            which += f", BatchNorm statistics recomputed on {recipe.ema_recalibrate_batches} training batches"
        start = f"from {self.weights}" if self.weights else "from scratch"
        return export.write_entry(
            self.export_model(), self.arch, self.output_dir, overwrite=self.overwrite,
            weights_source=f"retrained {start} in {self.model_dir}, {self.epoch} epochs; {which}",
            preprocessing=data.preprocessing_metadata(self.config.data),
            extra_metadata={"retrain": {"model_dir": str(self.model_dir), "epochs": self.epoch,
                                        "recipe": config_lib.to_dict(self.config)["train"],
                                        "history": self.history}},
            data_config=self.config.data, export_config=self.config.export)


def load_trained(source) -> tuple[keras.Model, RetrainConfig]:
    """The evaluated weights (EMA when on) of a retrain model_dir, or of one checkpoint in it
    (model_dir/checkpoints/ckpt-N), as a float32 Keras model; with the run's configuration."""
    path = Path(source)
    if Path(str(path) + ".index").is_file():
        checkpoint, model_dir = str(path), path.parent.parent
    else:
        model_dir = path
        checkpoint = tf.train.latest_checkpoint(str(path / CHECKPOINTS)) if (path / CHECKPOINTS).is_dir() else None
    if not checkpoint or not (model_dir / ARCH_FILE).is_file():
        raise ValueError(f"{str(source)!r} is not a retrain model_dir with a checkpoint (it needs {ARCH_FILE} and "
                         f"{CHECKPOINTS}/ckpt-N) nor such a checkpoint; valid are those, a .keras file, a zoo "
                         "entry folder or a .tflite file.")
    config = config_lib.load(RetrainConfig, str(model_dir / "config.yaml"))
    arch = Arch.from_json(json.loads((model_dir / ARCH_FILE).read_text()))
    with dtype_policy("float32"):
        model = build_child(arch, name="cream")
    key = "ema" if config.train.ema_decay > 0 else "model"
    tf.train.Checkpoint(**{key: model}).restore(checkpoint).expect_partial().assert_existing_objects_matched()
    batches = config.train.ema_recalibrate_batches
    if key == "ema" and batches:  # as Retrainer.export_model, so both give the same model
        recalibrate_batchnorm(model, data.load(config.data, config.train.train_split, training=False).take(batches))
    return model, config
