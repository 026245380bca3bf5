"""`python main.py --mode=retrain`: one architecture trained with the paper's recipe, then exported.

The recipe (RecipeConfig's defaults, from the official retrain settings): TF-style RMSprop
(rho 0.9, momentum 0.9, epsilon 1e-3), lr 0.064 per 1024 images scaled linearly with the batch,
3 warm-up epochs from 1e-6, x0.973 every 2.4 epochs, L2 weight decay 1e-5 on kernels only,
dropout 0.2, label smoothing 0.1, an EMA of the weights (0.9999) that is what gets evaluated
and exported, float16 compute on GPUs. Augmentation (RandAugment, random erasing, mixup,
cutmix) is DataConfig's, applied by cream_tf.data to the training split only.

Layout of `model_dir` (written by the chief worker; names in cream_tf.folders):

    config.yaml           the resolved configuration
    arch.json             the architecture trained (the data sets its input size, channels, classes)
    checkpoints/          model, optimizer, EMA copy, epoch and history; a new run in model_dir resumes here
    history.json          per epoch: loss, training top-1, learning rate, eval top-1, seconds
    tensorboard/          the same as scalars
    entry/                the zoo entry folder (unless output_dir is given)
    qat/, entry_qat/      with qat.enabled: the QAT fine-tune's run and its entry (cream_tf.qat)
    retrain_result.json   figures per exported format, timings, where the entry is

Training runs in `keras.Model.fit` (cream_tf.training) with `RetrainModel.train_step`.

Example (no output shown: a full run takes about half an hour on two CPU cores):

    from cream_tf import config as config_lib
    from cream_tf.arch import Arch
    config = config_lib.load(config_lib.RetrainConfig, "configs/retrain/fashion_mnist.yaml")
    arch = Arch.parse("[0][0][0][0][0]@28;in=1;classes=10;stem=16/1")
    result = RetrainRun(config, arch, "runs/retrain").run()
    result["accuracy"]["top1"]      # measured per format on the test split
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import keras
import tensorflow as tf
from absl import logging

from cream_tf import atomic, checkpoints, data, evaluate, export, folders, qat, zoo
from cream_tf import config as config_lib
from cream_tf.arch import Arch
from cream_tf.callbacks import Progress
from cream_tf.childnet import build_child
from cream_tf.config import RetrainConfig
from cream_tf.keras_internals import FitModel
from cream_tf.optim import RecipeSchedule, TFRMSprop, decays
from cream_tf.training import TrainingRun


def fit_to_data(arch: Arch, config: RetrainConfig) -> Arch:
    """The architecture's blocks and stem with the data's input and the recipe's regularization."""
    d, recipe = config.data, config.train
    fitted = arch.replace(
        input_size=d.image_size,
        in_channels=d.channels,
        num_classes=d.num_classes,
        dropout=recipe.dropout,
        drop_path=recipe.drop_path,
    )
    changed = [
        f"{name} {getattr(arch, name)} -> {getattr(fitted, name)}"
        for name in ("input_size", "in_channels", "num_classes")
        if getattr(arch, name) != getattr(fitted, name)
    ]
    if changed:
        logging.warning("The data sets the architecture's %s.", ", ".join(changed))
    return fitted


def arch_from(
    *, search_result: str | None = None, zoo_name: str | None = None, arch: str | None = None, model_dir=None
) -> Arch:
    """The architecture to retrain from exactly one source; with none, the one `model_dir` was trained on."""
    given = [name for name, value in (("search_result", search_result), ("zoo", zoo_name), ("arch", arch)) if value]
    if len(given) > 1:
        raise ValueError(f"Give one architecture source; got {', '.join('--' + g for g in given)}.")
    if search_result:
        path = Path(search_result)
        if not path.is_file():
            raise ValueError(
                f"search_result={search_result!r} is not a file; valid is the search_result.json "
                "a search wrote in its model_dir."
            )
        winner = json.loads(path.read_text()).get("winner")
        if not winner or "arch" not in winner:
            raise ValueError(
                f'{search_result} has no winner ("winner": {winner!r}); valid is a search_result.json '
                "of a search whose board was not empty."
            )
        return Arch.parse(winner["arch"])
    if zoo_name:
        return zoo.arch_of(zoo_name)
    if arch:
        return Arch.parse(arch)
    saved = Path(model_dir or "") / folders.ARCH_FILE
    if model_dir and saved.is_file():
        return Arch.from_json(json.loads(saved.read_text()))
    raise ValueError(
        f"No architecture: give --search_result=FILE, --zoo=NAME (one of {', '.join(zoo.names())}) "
        f"or --arch=STRING, or a --model_dir holding {folders.ARCH_FILE} from an earlier run."
    )


@contextlib.contextmanager
def dtype_policy(name: str):
    """Builds models under a dtype policy, then puts the previous one back (it is global)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


class RetrainModel(FitModel):
    """The child net trained with the recipe's step (coupled L2, label smoothing, loss scaling
    under mixed precision) and, when EMA is on, an EMA copy of every weight updated after it."""

    def __init__(self, model: keras.Model, ema_model: keras.Model | None, recipe, global_batch_size: int):
        super().__init__(name="recipe")
        self.model, self.ema_model, self.recipe = model, ema_model, recipe
        self.global_batch_size = global_batch_size
        self.built = True

    def train_step(self, data):
        images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        recipe, model = self.recipe, self.model
        variables = model.trainable_variables
        decayed = [v for v, decay in zip(variables, decays(variables)) if decay]
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        with tf.GradientTape() as tape:
            logits = tf.cast(model(images, training=True), tf.float32)
            # Mixup/cutmix already give soft labels; one form for both lets smoothing apply alike.
            targets = labels if labels.shape.rank == 2 else tf.one_hot(labels, model.output_shape[-1])
            per_example = keras.losses.categorical_crossentropy(
                targets, logits, from_logits=True, label_smoothing=recipe.label_smoothing
            )
            ce = tf.reduce_sum(per_example) / self.global_batch_size  # global mean once summed over replicas
            # Coupled L2 (grad += wd * w before the RMS scaling) as timm's RMSpropTF applies weight
            # decay; Keras' weight_decay is the decoupled AdamW kind, a different strength.
            l2 = 0.5 * recipe.weight_decay * tf.add_n([tf.reduce_sum(tf.square(v)) for v in decayed])
            loss = ce + l2 / replicas
            scaled = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1), tf.argmax(targets, -1)), tf.float32))
        if self.ema_model is not None:
            tf.distribute.get_replica_context().merge_call(self._update_ema)
        figures = {"loss": loss, "ce": ce, "correct": correct}
        if replicas > 1:  # every replica returns the global figures (Keras averages what replicas return)
            figures = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, figures)
        return self.step_outputs(figures)

    def _update_ema(self, strategy):
        decay = tf.constant(self.recipe.ema_decay, tf.float32)
        if self.recipe.ema_warmup:
            step = tf.cast(self.optimizer.iterations, tf.float32)  # already counts this step
            decay = tf.minimum(decay, step / (9.0 + step))
        for average, value in zip(self.ema_model.weights, self.model.weights):
            average.assign(decay * average + (1.0 - decay) * tf.cast(value, average.dtype))


class RetrainRun(TrainingRun):
    """One retrain run in `model_dir`; `run()` resumes from the latest checkpoint there.

    Args:
      weights: a `.keras` file or zoo entry folder to start from (e.g. a search's
        model_dir/zoo/board_NN), else fresh weights.
      output_dir: where the entry folder goes (default model_dir/entry, replaced on every run);
        an existing output_dir is replaced only with `overwrite`.
    """

    RESULT_FILE = folders.RETRAIN_RESULT_FILE
    # What follows the training (export, the QAT fine-tune of the entry) may change on a resume.
    REPORTING_KEYS = TrainingRun.REPORTING_KEYS + ("export.", "train.eval_", "qat.")
    SUMMED = ("loss", "ce", "correct")

    def __init__(
        self,
        config: RetrainConfig,
        arch: Arch,
        model_dir,
        *,
        weights=None,
        output_dir=None,
        overwrite: bool = False,
        strategy: tf.distribute.Strategy | None = None,
    ):
        config.validate()
        self.config, self.recipe = config, config.train
        self.arch = fit_to_data(arch, config)
        self._check_same_arch(Path(model_dir))
        super().__init__(
            model_dir,
            strategy,
            seed=self.recipe.seed,
            deterministic=self.recipe.deterministic,
            data_config=config.data,
            split=self.recipe.train_split,
            steps_per_epoch=self.recipe.steps_per_epoch,
            epochs=self.recipe.epochs,
            checkpoint_every=self.recipe.checkpoint_every_epochs,
            checkpointing=self.recipe,
        )
        self.weights = weights
        self.output_dir = Path(output_dir) if output_dir else self.model_dir / "entry"
        atomic.check_folder(self.output_dir, "output_dir")
        self.overwrite = overwrite or not output_dir
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
            self.fit_model = RetrainModel(self.model, self.ema_model, self.recipe, config.data.batch_size)
            self.fit_model.compile(optimizer=self.optimizer, jit_compile=False)
        self.history = []

    # --- set-up -----------------------------------------------------------------------------

    def _check_same_arch(self, model_dir: Path) -> None:
        saved = model_dir / folders.ARCH_FILE
        if saved.is_file():
            previous = Arch.from_json(json.loads(saved.read_text()))
            if previous != self.arch:
                raise ValueError(
                    f"{model_dir} holds a run of {previous}, not {self.arch}; valid are the "
                    "same architecture and data (to resume) or a new --model_dir."
                )

    def _optimizer(self) -> keras.optimizers.Optimizer:
        recipe = self.recipe
        schedule = RecipeSchedule(recipe, self.config.data.batch_size, self.steps_per_epoch)
        if recipe.optimizer == "rmsprop":
            optimizer = TFRMSprop(
                schedule, rho=recipe.rmsprop_rho, momentum=recipe.momentum, epsilon=recipe.rmsprop_epsilon
            )
        else:
            optimizer = keras.optimizers.SGD(schedule, momentum=recipe.momentum, nesterov=True)
        # Weight decay is an L2 term of the loss (see RetrainModel), not Keras' decoupled kind.
        return keras.optimizers.LossScaleOptimizer(optimizer) if self.mixed else optimizer

    @property
    def learning_rate(self) -> float:
        inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        return float(inner.learning_rate)

    # --- what the training skeleton asks for ------------------------------------------------

    def checkpoint_variables(self) -> dict[str, list]:
        lists = {"model": self.model.weights, "optimizer": self.optimizer.variables}
        if self.ema_model is not None:
            lists["ema"] = self.ema_model.weights
        return lists

    def host_state(self) -> dict:
        return {"history": self.history}

    def set_host_state(self, state: dict) -> None:
        self.history = state["history"]

    def callbacks(self) -> list[keras.callbacks.Callback]:
        batch = self.config.data.batch_size
        return [
            Progress(self, lambda logs: [("loss", logs["loss"]), ("top1", 100.0 * logs["correct"] / batch)]),
        ]

    def end_epoch(self, logs: dict) -> None:
        recipe, sums, steps = self.recipe, self.sums, self.steps_per_epoch
        row = {
            "epoch": self.epoch,
            "loss": sums["loss"] / steps,
            "ce": sums["ce"] / steps,
            "train_top1": 100.0 * sums["correct"] / (steps * self.config.data.batch_size),
            "lr": self.learning_rate,
        }
        if recipe.eval_every_epochs and self.epoch % recipe.eval_every_epochs == 0:
            row[f"{recipe.eval_split}_top1"] = self.evaluate()
        row["seconds"] = round(time.time() - self.epoch_began, 1)
        self.history.append(row)
        figures = ", ".join(f"{key} {value:.4g}" for key, value in row.items() if key not in ("epoch", "seconds"))
        logging.info("epoch %d/%d done: %s (%.1f s)", self.epoch, self.epochs, figures, row["seconds"])
        self.scalars(self.epoch, {f"epoch/{key}": value for key, value in row.items() if key != "epoch"})
        if self.is_chief:
            atomic.write_json(self.model_dir / folders.HISTORY_FILE, self.history)

    # --- evaluation and export --------------------------------------------------------------

    def export_model(self) -> keras.Model:
        """What is evaluated and exported: a float32 copy, outside any strategy, of the EMA weights
        when EMA is on (BatchNorm statistics recomputed if the recipe says so), else the weights."""
        with dtype_policy("float32"):
            return checkpoints.portable_model(
                self.arch, (self.ema_model or self.model).get_weights(), checkpoints.ema_calibration(self.config)
            )

    def evaluate(self, max_batches: int | None = None) -> float:
        dataset = data.load(self.config.data, self.recipe.eval_split, training=False)
        predict = evaluate.KerasPredictor(self.export_model())
        batches = self.recipe.eval_batches if max_batches is None else max_batches
        return evaluate.accuracy(predict, dataset, batches)["top1"]

    def write_inputs(self) -> None:
        super().write_inputs()
        atomic.write_json(self.model_dir / folders.ARCH_FILE, self.arch.to_json())

    def finish(self) -> dict:
        """Evaluates and exports."""
        recipe = self.recipe
        result = {
            "arch": str(self.arch),
            "epochs": self.epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "weights_start": str(self.weights) if self.weights else "fresh",
            "ema": recipe.ema_decay or None,
            "history": self.history,
        }
        if self.config.export.enabled:
            entry = self.write_entry()
            metadata = json.loads((entry / folders.METADATA_FILE).read_text())
            result.update(entry=str(entry), accuracy=metadata.get("accuracy"))
            if self.config.qat.enabled:
                quantized = qat.QatRun(
                    self.config, entry, self.model_dir / "qat", self.model_dir / "entry_qat", overwrite=True
                )
                result["qat"] = quantized.run()
        else:
            result["accuracy"] = {"split": recipe.eval_split, "top1": {"keras": self.evaluate()}}
        return result

    def write_entry(self) -> Path:
        recipe = self.recipe
        which = f"EMA ({recipe.ema_decay:g}) weights" if self.ema_model is not None else "weights (EMA off)"
        if self.ema_model is not None and recipe.ema_recalibrate_batches:
            which += f", BatchNorm statistics recomputed on {recipe.ema_recalibrate_batches} training batches"
        start = f"from {self.weights}" if self.weights else "from scratch"
        return export.write_entry(
            self.export_model(),
            self.arch,
            self.output_dir,
            overwrite=self.overwrite,
            weights_source=f"retrained {start} in {self.model_dir}, {self.epoch} epochs; {which}",
            produced_by="retrain",
            extra_metadata={
                "retrain": {
                    "model_dir": str(self.model_dir),
                    "epochs": self.epoch,
                    "recipe": config_lib.to_dict(self.config)["train"],
                    "history": self.history,
                }
            },
            data_config=self.config.data,
            export_config=self.config.export,
        )
