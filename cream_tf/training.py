"""The training-run skeleton the search and the retrain share, driven by Keras' own `fit`.

A `TrainingRun` owns what both runs need around their model's `train_step`: the strategy and
which worker writes results, seeding and op determinism, steps per epoch, the seeded data of
every epoch, checkpoints (TensorFlow variables plus the host's own state as JSON, so a resumed
run continues exactly), the TensorBoard writer and the progress bar. A subclass supplies the
model (a `keras.Model` whose `train_step` does the work), its callbacks and its host state.

Why callbacks of our own beside Keras' (Progbar aside): Keras' BackupAndRestore saves the
model's weights only, not host state such as the search's sampler, board and history, nor
variables outside the model (the search's path-wise optimizer), and restarts an epoch's data
from its start; exact resume needs all of it.
"""

from __future__ import annotations

import functools
import json
import shutil
import sys
import tempfile
from pathlib import Path

import keras
import tensorflow as tf
from absl import logging

from cream_tf import atomic, data, distribute, folders
from cream_tf.config import DataConfig

# Seeds of the input pipelines: epoch e of worker w reads seed * 1000 + e + PIPELINE_STRIDE * w,
# so an epoch's batches are the same whether or not the run resumed before it.
PIPELINE_STRIDE = 7919


class FitModel(keras.Model):
    """Base of the models a run fits: they are built when constructed and compile no loss or
    metrics, so Keras' symbolic build has nothing to do. Under a strategy Keras' `fit` still
    draws one batch from a first iterator of the data for it, then starts training on a second
    one; a seeded pipeline that reshuffles per iteration then trains on its second order, not
    its first, and an exact resume would depend on that. Skipped once built."""

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if not self.built:
            super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    @staticmethod
    def step_outputs(outputs: dict) -> dict:
        """What a train_step returns, in the shape Keras can average over the replicas.

        Every replica returns the same global figures; Keras averages them. Across workers
        (MultiWorkerMirroredStrategy with a cluster) it averages along axis 0, which a scalar
        does not have (Keras 3.15 raises), so there every value gets a leading axis of one, which
        the average takes off again. The test is Keras' own (backend/tensorflow/trainer.py).
        """
        strategy = tf.distribute.get_strategy()
        if (
            isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode()
        ):
            return {key: value[None] for key, value in outputs.items()}
        return outputs


class TrainingRun:
    """One run in `model_dir`; a later run there resumes from its latest checkpoint.

    Subclasses set `self.trainer` (the keras.Model whose `train_step` trains, built in
    `self.strategy.scope()` and compiled) and implement
    `checkpoint_variables()`, `host_state()`/`set_host_state()`, `callbacks()` and `end_epoch()`.
    """

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
    ):
        self.model_dir = Path(model_dir)
        self.strategy = strategy or distribute.make_strategy()
        if deterministic:
            tf.config.experimental.enable_op_determinism()
        keras.utils.set_random_seed(seed)
        distribute.check_batch(data_config.batch_size, self.strategy)
        self.seed, self.data_config, self.split = seed, data_config, split
        self.epochs, self.checkpoint_every = epochs, checkpoint_every
        # The data is checked (present, labels in range) before any model is built.
        available = data.num_examples(data_config, split)
        self.steps_per_epoch = steps_per_epoch or available // data_config.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"Split {split!r} has fewer images than one batch of {data_config.batch_size}; lower data.batch_size."
            )
        self.epoch = 0
        self.writer = None
        self._checkpoint = None

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

    # --- data -------------------------------------------------------------------------------

    def dataset(self):
        """Every remaining epoch's batches, epoch after epoch, distributed over the replicas."""
        config, first, steps = self.data_config, self.epoch, self.steps_per_epoch

        def per_worker(context):
            batch = context.get_per_replica_batch_size(config.batch_size)
            epochs = [
                data.load(
                    config,
                    self.split,
                    training=True,
                    repeat=True,
                    batch_size=batch,
                    seed=self.seed * 1000 + epoch + PIPELINE_STRIDE * context.input_pipeline_id,
                ).take(steps)
                for epoch in range(first, self.epochs)
            ]
            return functools.reduce(tf.data.Dataset.concatenate, epochs)

        return self.strategy.distribute_datasets_from_function(per_worker)

    # --- checkpoints ------------------------------------------------------------------------

    @property
    def checkpoint(self) -> tf.train.Checkpoint:
        if self._checkpoint is None:
            self._checkpoint = tf.train.Checkpoint(
                **{name: folders.Slots(variables) for name, variables in self.checkpoint_variables().items()}
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
        path = tf.train.CheckpointManager(self.checkpoint, str(directory), max_to_keep=2).save()
        if not self.is_chief:
            shutil.rmtree(directory, ignore_errors=True)
            return
        number = int(path.rsplit("-", 1)[1])
        atomic.write_json(directory / f"host_state-{number}.json", {"epoch": self.epoch, **self.host_state()})
        for old in directory.glob("host_state-*.json"):  # those of checkpoints the manager deleted
            if not (directory / f"ckpt-{old.stem.split('-')[1]}.index").exists():
                old.unlink()

    def restore(self) -> bool:
        directory = self.model_dir / folders.CHECKPOINTS
        latest = tf.train.latest_checkpoint(str(directory))
        if not latest:
            return False
        self.checkpoint.restore(latest).assert_existing_objects_matched()
        state = json.loads((directory / f"host_state-{latest.rsplit('-', 1)[1]}.json").read_text())
        self.epoch = state.pop("epoch")
        self.set_host_state(state)
        logging.info("Resumed from %s after epoch %d.", latest, self.epoch)
        return True

    # --- the run ----------------------------------------------------------------------------

    def scalars(self, step: int, values: dict) -> None:
        if self.writer is None:
            return
        with self.writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, float(value))

    def train(self, stop_at_epoch: int | None = None) -> bool:
        """Restores, then trains the remaining epochs with `model.fit`; returns whether every
        epoch is done (False when stopped after `stop_at_epoch`, as an interrupted run would be)."""
        if self.is_chief:
            self.model_dir.mkdir(parents=True, exist_ok=True)
            self.writer = tf.summary.create_file_writer(str(self.model_dir / folders.TENSORBOARD))
        self.restore()
        if self.epoch < self.epochs:
            self.trainer.fit(
                self.dataset(),
                epochs=self.epochs,
                initial_epoch=self.epoch,
                steps_per_epoch=self.steps_per_epoch,
                shuffle=False,
                verbose=0,
                callbacks=[*self.callbacks(), _EpochEnd(self, stop_at_epoch)],
            )
        return self.epoch >= self.epochs


class _EpochEnd(keras.callbacks.Callback):
    """Counts the epoch, lets the run record it, writes the checkpoint, stops when asked."""

    def __init__(self, run: TrainingRun, stop_at_epoch: int | None):
        super().__init__()
        self.run, self.stop_at_epoch = run, stop_at_epoch

    def on_epoch_begin(self, epoch, logs=None):
        logging.info("Epoch %d/%d", epoch + 1, self.run.epochs)

    def on_epoch_end(self, epoch, logs=None):
        run = self.run
        run.epoch = epoch + 1
        run.end_epoch(logs or {})
        if run.epoch % run.checkpoint_every == 0 or run.epoch == run.epochs:
            run.save()
        if self.stop_at_epoch is not None and run.epoch >= self.stop_at_epoch:
            self.model.stop_training = True


class Progress(keras.callbacks.Callback):
    """Keras' progress bar over each epoch, on the chief only: redrawn on a terminal, one line
    per epoch when the output is a file. `values(logs)` gives the (name, value) pairs to show;
    names in `stateful` are shown as they are, the others averaged over the epoch."""

    def __init__(self, run: TrainingRun, values, stateful=()):
        super().__init__()
        self.run, self.values, self.stateful = run, values, list(stateful)
        self.bar = None

    def on_epoch_begin(self, epoch, logs=None):
        self.bar = keras.utils.Progbar(
            self.run.steps_per_epoch,
            stateful_metrics=self.stateful,
            verbose=(1 if sys.stdout.isatty() else 2) if self.run.is_chief else 0,
        )

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(batch + 1, self.values(logs or {}))
