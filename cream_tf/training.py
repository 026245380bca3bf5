"""The training-run skeleton the search and the retrain share, driven by Keras' own `fit`.

A `TrainingRun` owns what both runs need around their model's `train_step`: the strategy and
which worker writes results, seeding and op determinism, steps per epoch, the seeded data of
every epoch, checkpoints (TensorFlow variables plus the host's own state as JSON, so a resumed
run continues exactly), the TensorBoard writer and the progress bar. A subclass supplies the
model (a `keras.Model` whose `train_step` does the work), its callbacks and its host state.

Around the training: one run per folder and stopping on signals (cream_tf.run_guard), a
resumed run must train what its config.yaml says (`check_same_config`), checkpoints mid-epoch
too (every N steps or minutes, and on SIGTERM/SIGINT), restore skips damaged checkpoints, a
non-finite loss stops the run (the callbacks are cream_tf.callbacks).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from pathlib import Path

import keras
import tensorflow as tf
from absl import logging

from cream_tf import RunError, atomic, data, distribute, folders
from cream_tf import config as config_lib
from cream_tf.callbacks import CountSteps, ReportGraphBuild, StopOnNonFiniteLoss, WriteCheckpoints
from cream_tf.checkpoints import Slots
from cream_tf.config import DataConfig
from cream_tf.run_guard import folder_lock, stop_on_signals

# Seeds of the input pipelines: epoch e of worker w reads seed * 1000 + e + PIPELINE_STRIDE * w,
# so an epoch's batches are the same whether or not the run resumed before it.
PIPELINE_STRIDE = 7919


class TrainingRun:
    """One run in `model_dir`; a later run there resumes from its latest checkpoint.

    Subclasses set `self.config` and `self.fit_model` (the FitModel whose `train_step` trains,
    built in `self.strategy.scope()` and compiled) and implement `checkpoint_variables()`,
    `host_state()`/`set_host_state()`, `callbacks()`, `end_epoch()` and `finish()`, and name
    `RESULT_FILE` and the step outputs to sum over an epoch (`SUMMED`, read in `end_epoch` from
    `self.sums`).
    """

    RESULT_FILE = ""
    SUMMED: tuple[str, ...] = ("loss",)

    def __init__(
        self,
        model_dir,
        strategy,
        *,
        seed: int,
        deterministic: bool,
        data_config: DataConfig,
        split: str,
        steps_per_epoch: int,
        epochs: int,
        checkpoint_every: int = 1,
        checkpointing: config_lib.Checkpointing | None = None,
    ):
        atomic.check_folder(model_dir, "model_dir")
        self.model_dir = Path(model_dir)
        self.strategy = strategy or distribute.make_strategy()
        if deterministic:
            tf.config.experimental.enable_op_determinism()
        keras.utils.set_random_seed(seed)
        distribute.check_batch(data_config.batch_size, self.strategy)
        self.seed, self.data_config, self.split = seed, data_config, split
        self.epochs, self.checkpoint_every = epochs, checkpoint_every
        self.checkpointing = checkpointing or config_lib.Checkpointing()
        if self.checkpointing.checkpoint_every_minutes and distribute.workers(self.strategy) > 1:
            # Every worker takes part in a save, and their clocks would not agree on when.
            raise ValueError(
                f"train.checkpoint_every_minutes={self.checkpointing.checkpoint_every_minutes} is not valid with "
                f"{distribute.workers(self.strategy)} workers; valid: 0, with train.checkpoint_every_steps instead."
            )
        # The data is checked (present, labels in range) before any model is built.
        available = data.num_examples(data_config, split)
        self.steps_per_epoch = steps_per_epoch or available // data_config.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"Split {split!r} has fewer images than one batch of {data_config.batch_size}; lower data.batch_size."
            )
        # Epochs done, and steps done in the next one (a mid-epoch checkpoint resumes there);
        # `offset` is what the batch index of the current `fit` call starts from.
        self.epoch, self.batch, self.offset = 0, 0, 0
        self.sums, self.epoch_began, self.last_save = {}, 0.0, time.time()
        self.stop_signal = 0  # SIGTERM or SIGINT arrived: stop after this step (cream_tf.run_guard)
        self.steps_since_save = 0  # steps trained since the last checkpoint, or since the start
        self.first_step_seconds = 0.0  # tracing and the first step, as the last start measured it
        self.writer = None
        self._checkpoint = self._host_state = None

    @property
    def is_chief(self) -> bool:
        return distribute.is_chief(self.strategy)

    # --- what a subclass supplies ------------------------------------------------------------

    def checkpoint_variables(self) -> dict[str, list]:
        raise NotImplementedError

    def host_state(self) -> dict:
        return {}

    def set_host_state(self, state: dict) -> None:
        pass

    def callbacks(self) -> list[keras.callbacks.Callback]:
        return []

    def end_epoch(self, logs: dict) -> None:
        """After each epoch (self.epoch already counts it), before its checkpoint."""

    def write_inputs(self) -> None:
        """On the chief, before training: what the run was asked to do."""
        config_lib.save(self.config, self.model_dir / folders.CONFIG_FILE)

    def finish(self) -> dict:
        """On the chief, after the last epoch: the result (selection, evaluation, export)."""
        raise NotImplementedError

    # --- data -------------------------------------------------------------------------------

    def dataset(self):
        """The current epoch's batches (the steps already done of it skipped, after a mid-epoch
        checkpoint), distributed over the replicas. Its seed is the epoch's, so a resumed epoch
        sees the batches it would have seen."""
        config, epoch, steps, done = self.data_config, self.epoch, self.steps_per_epoch, self.batch

        def per_worker(context):
            return (
                data.load(
                    config,
                    self.split,
                    training=True,
                    repeat=True,
                    batch_size=context.get_per_replica_batch_size(config.batch_size),
                    seed=self.seed * 1000 + epoch + PIPELINE_STRIDE * context.input_pipeline_id,
                )
                .take(steps)
                .skip(done)
            )

        return self.strategy.distribute_datasets_from_function(per_worker)

    # --- checkpoints ------------------------------------------------------------------------

    @property
    def checkpoint(self) -> tf.train.Checkpoint:
        """The run's variables and, in the same files, its host state as JSON: a checkpoint is
        whole or absent, never TF variables without the host state that goes with them."""
        if self._checkpoint is None:
            with tf.device("/cpu:0"):
                self._host_state = tf.Variable("", dtype=tf.string, trainable=False)
            self._checkpoint = tf.train.Checkpoint(
                host_state=self._host_state,
                **{name: Slots(variables) for name, variables in self.checkpoint_variables().items()},
            )
        return self._checkpoint

    def save(self) -> None:
        # Every worker takes part in saving; only the chief's copy is kept.
        directory = (
            self.model_dir / folders.CHECKPOINTS
            if self.is_chief
            else Path(tempfile.mkdtemp(prefix="cream-worker-checkpoint-"))
        )
        directory.mkdir(parents=True, exist_ok=True)
        checkpoint = self.checkpoint
        state = {
            "epoch": self.epoch,
            "batch": self.batch,
            "sums": self.sums,
            "first_step_seconds": self.first_step_seconds,
            **self.host_state(),
        }
        self._host_state.assign(json.dumps(state, allow_nan=False))
        tf.train.CheckpointManager(checkpoint, str(directory), max_to_keep=2).save()
        self.last_save, self.steps_since_save = time.time(), 0
        if not self.is_chief:
            shutil.rmtree(directory, ignore_errors=True)

    def restore(self) -> bool:
        """Restores the newest readable checkpoint, newest first (TensorFlow writes a checkpoint's
        index after its data, so a listed index is a finished write; a damaged one fails to read
        and the one before it is tried). False when there is none; RunError when none is usable."""
        directory = self.model_dir / folders.CHECKPOINTS
        found = sorted(directory.glob("ckpt-*.index"), key=lambda p: int(p.stem.split("-")[1]), reverse=True)
        skipped = []
        for index in found:
            prefix = str(index.with_suffix(""))
            try:
                self.checkpoint.restore(prefix).assert_existing_objects_matched()
                state = json.loads(self._host_state.numpy().decode())
            except Exception as error:  # a damaged file fails in many ways (DataLossError, IndexError, ...)
                reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
                skipped.append(f"{index.stem}: {reason}")
                logging.warning("Checkpoint %s is not usable (%s); trying the one before it.", prefix, reason)
                continue
            self.epoch, self.batch, self.sums = state.pop("epoch"), state.pop("batch"), state.pop("sums")
            self.first_step_seconds = state.pop("first_step_seconds", 0.0)
            self.set_host_state(state)
            logging.info(
                "Resumed from %s: epoch %d, step %d%s.",
                prefix,
                self.epoch + 1 if self.batch else self.epoch,
                self.batch or self.steps_per_epoch,
                f" (skipped {', '.join(s.split(':')[0] for s in skipped)})" if skipped else "",
            )
            return True
        if skipped:
            raise RunError(
                f"No usable checkpoint in {directory}: {'; '.join(skipped)}. Start afresh in a new "
                "--model_dir, or remove that checkpoints folder."
            )
        return False

    # --- the run ----------------------------------------------------------------------------

    def scalars(self, step: int, values: dict) -> None:
        if self.writer is None:
            return
        with self.writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, float(value))

    def image(self, step: int, name: str, png: bytes) -> None:
        if self.writer is not None:
            with self.writer.as_default(step=step):
                tf.summary.image(name, tf.image.decode_png(png)[None])

    def log_config(self) -> None:
        """The run's config in TensorBoard: config.yaml as text, and every key as an hparam, so
        runs line up in the HParams dashboard beside their result/ scalars."""
        from tensorboard.plugins.hparams import api as hparams

        flat = config_lib.flatten(config_lib.to_dict(self.config))
        values = {
            key: value if isinstance(value, (bool, int, float, str)) else str(value) for key, value in flat.items()
        }
        with self.writer.as_default(step=0):
            text = config_lib.to_yaml(self.config)  # what config.yaml holds
            tf.summary.text("config", "".join(f"    {line}\n" for line in text.splitlines()))  # markdown code
            hparams.hparams(values, trial_id=str(self.model_dir))

    def train(self, stop_at_epoch: int | None = None) -> bool:
        """Restores, then trains the remaining epochs with `model.fit`; returns whether every
        epoch is done (False when stopped after `stop_at_epoch`, as an interrupted run would be)."""
        if self.is_chief:
            self.model_dir.mkdir(parents=True, exist_ok=True)
            self.writer = tf.summary.create_file_writer(str(self.model_dir / folders.TENSORBOARD))
            self.log_config()
        self.restore()
        callbacks = [
            ReportGraphBuild(self),
            StopOnNonFiniteLoss(self),
            *self.callbacks(),
            CountSteps(self, stop_at_epoch),
            WriteCheckpoints(self),
        ]
        # One `fit` call per epoch, each on that epoch's pipeline: built for all epochs at once
        # and concatenated, 100 epochs of Fashion-MNIST took 382 s and 18.6 GB before the first
        # batch. The train function is traced once and kept between the calls.
        while self.epoch < self.epochs and not (stop_at_epoch and self.epoch >= stop_at_epoch):
            self.offset = self.batch  # after a mid-epoch checkpoint: the rest of its epoch
            self.fit_model.fit(
                self.dataset(),
                epochs=self.epoch + 1,
                initial_epoch=self.epoch,
                steps_per_epoch=self.steps_per_epoch - self.batch,
                shuffle=False,
                verbose=0,
                callbacks=callbacks,
            )
        return self.epoch >= self.epochs

    def run(self, stop_at_epoch: int | None = None, *, allow_config_change: bool = False) -> dict | None:
        """Trains (resuming when a checkpoint exists), then finishes; returns the result, also
        written to RESULT_FILE with its timings. None on other workers, and after `stop_at_epoch`
        (its checkpoint written, as an interrupted run would leave it).

        The chief holds `model_dir`'s lock throughout. A resumed run must train what the
        recorded config.yaml says (keys outside `REPORTING_KEYS`), unless `allow_config_change`.
        """
        start = time.time()
        guard = folder_lock(self.model_dir) if self.is_chief else contextlib.nullcontext()
        with guard, stop_on_signals(self, distribute.workers(self.strategy)):
            if not allow_config_change:
                self.check_same_config()
            if self.is_chief:
                self.write_inputs()
            result = None
            if self.train(stop_at_epoch) and self.is_chief:
                train_seconds = time.time() - start
                result = self.finish()
                result["timing"] = {
                    "train_seconds": round(train_seconds, 1),
                    "total_seconds": round(time.time() - start, 1),
                }
                atomic.write_json(self.model_dir / self.RESULT_FILE, result)
            # The other workers wait for the chief's selection and export: a worker that ends
            # first looks crashed to the cluster's coordination service, which says so on the chief.
            distribute.barrier(self.strategy, "run_end")
            return result

    # Config keys (dotted prefixes) that change where data is read, how often checkpoints are
    # written or what is reported, not what is trained; a resumed run may change them.
    REPORTING_KEYS: tuple[str, ...] = ("data.data_dir", "train.checkpoint_every")

    def check_same_config(self) -> None:
        """Refuses to resume a run whose checkpoints were trained under another config."""
        recorded = self.model_dir / folders.CONFIG_FILE
        if not recorded.is_file() or not any((self.model_dir / folders.CHECKPOINTS).glob("ckpt-*.index")):
            return
        old = config_lib.flatten(config_lib.to_dict(config_lib.load(type(self.config), str(recorded))))
        new = config_lib.flatten(config_lib.to_dict(self.config))
        changed = [
            key
            for key in sorted(old.keys() | new.keys())
            if old.get(key) != new.get(key) and not key.startswith(self.REPORTING_KEYS)
        ]
        if changed:
            raise RunError(
                f"{self.model_dir} holds a run trained with other settings: "
                + ", ".join(f"{key}={old.get(key)!r} there, {new.get(key)!r} now" for key in changed)
                + ". Use a new --model_dir, set those keys back, or pass --allow_config_change to resume anyway."
            )
