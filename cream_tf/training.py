"""The training-run skeleton the search and the retrain share, driven by Keras' own `fit`.

A `TrainingRun` owns what both runs need around their model's `train_step`: the strategy and
which worker writes results, seeding and op determinism, steps per epoch, the seeded data of
every epoch, checkpoints (TensorFlow variables plus the host's own state as JSON, so a resumed
run continues exactly), the TensorBoard writer and the progress bar. A subclass supplies the
model (a `keras.Model` whose `train_step` does the work), its callbacks and its host state.

Why callbacks of our own beside Keras' (Progbar, and TerminateOnNaN, which `_Divergence`
extends): Keras' BackupAndRestore saves the model's weights only, not host state such as the
search's sampler, board and history, nor variables outside the model (the search's path-wise
optimizer), and restarts an epoch's data from its start; exact resume needs all of it.

Around the training: one run per folder (`lock`), a resumed run must train what its
config.yaml says (`check_same_config`), checkpoints mid-epoch too (every N steps or minutes, and
on SIGTERM/SIGINT), restore skips damaged checkpoints, a non-finite loss stops the run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import keras
import tensorflow as tf
from absl import logging

from cream_tf import RunError, atomic, data, distribute, folders
from cream_tf import config as config_lib
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

    Subclasses set `self.config` and `self.trainer` (the keras.Model whose `train_step` trains,
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
        self.stop_signal = 0
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
                **{name: folders.Slots(variables) for name, variables in self.checkpoint_variables().items()},
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
        self.last_save = time.time()
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

        flat = _flatten(config_lib.to_dict(self.config))
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
        callbacks = [_FirstStep(self), _Divergence(self), *self.callbacks(), _EpochEnd(self, stop_at_epoch)]
        # One `fit` call per epoch, each on that epoch's pipeline: built for all epochs at once
        # and concatenated, 100 epochs of Fashion-MNIST took 382 s and 18.6 GB before the first
        # batch. The train function is traced once and kept between the calls.
        while self.epoch < self.epochs and not (stop_at_epoch and self.epoch >= stop_at_epoch):
            self.offset = self.batch  # after a mid-epoch checkpoint: the rest of its epoch
            self.trainer.fit(
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
        with lock(self.model_dir) if self.is_chief else contextlib.nullcontext(), _signals(self):
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
        old = _flatten(config_lib.to_dict(config_lib.load(type(self.config), str(recorded))))
        new = _flatten(config_lib.to_dict(self.config))
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


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


LOCK_FILE = ".lock"


@contextlib.contextmanager
def lock(model_dir: Path):
    """One run per folder: `model_dir/.lock` holds the owner's pid and host, created exclusively
    before anything else is written there. A lock whose process is gone (same host) is taken
    over with a warning; one held by a live process, or from another host, is a RunError."""
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = json.loads(path.read_text())
            except (OSError, ValueError):
                owner = {}
            if owner.get("host") == me["host"] and isinstance(owner.get("pid"), int) and not _alive(owner["pid"]):
                logging.warning("Taking over the lock of %s from pid %d, which has ended.", model_dir, owner["pid"])
                path.unlink(missing_ok=True)
                continue
            raise RunError(
                f"{model_dir} is in use by pid {owner.get('pid', '?')} on {owner.get('host', '?')} since "
                f"{owner.get('since', '?')}. Wait for that run, use another --model_dir, or delete "
                f"{path} if that run is gone."
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Divergence(keras.callbacks.TerminateOnNaN):
    """Keras' TerminateOnNaN, raising: a non-finite loss or gradient norm ends the run at once,
    before the step reaches the board or a checkpoint, with what to try."""

    def __init__(self, run: TrainingRun):
        super().__init__(raise_error=True)
        self.run = run

    def on_batch_end(self, batch, logs=None):
        logs = logs or {}
        for key in ("loss", "grad_norm"):
            if key in logs and not math.isfinite(float(logs[key])):
                run = self.run
                raise RunError(
                    f"Training diverged in epoch {run.epoch + 1}, step {run.offset + batch + 1}: {key} is "
                    f"{float(logs[key])} "
                    f"(train.lr={run.config.train.lr}). Nothing was exported; the checkpoints in "
                    f"{run.model_dir / folders.CHECKPOINTS} are from before it. Try a lower train.lr, or check "
                    "the data (pixel range, labels)."
                )


class Interrupted(RunError):
    """SIGTERM or SIGINT: the step finished, a checkpoint written, the run ends with 128 + signal."""

    def __init__(self, run: TrainingRun):
        name = signal.Signals(run.stop_signal).name
        super().__init__(
            f"Stopped by {name} in epoch {run.epoch + 1} after step {run.batch}; a checkpoint is in "
            f"{run.model_dir / folders.CHECKPOINTS}. Run the same command again to resume there."
        )
        self.exit_code = 128 + run.stop_signal


@contextlib.contextmanager
def _signals(run: TrainingRun):
    """While a run trains on one machine, SIGTERM (a scheduler's preemption) and SIGINT (Ctrl-C)
    let the step finish, then a checkpoint is written and Interrupted raised; a second one stops
    at once."""
    if threading.current_thread() is not threading.main_thread() or distribute.workers(run.strategy) > 1:
        # Across machines the workers would have to agree on the step to stop at (every worker
        # takes part in a save); there a signal ends the process as it would without this.
        yield
        return

    def handler(signum, frame):
        if run.stop_signal:
            raise KeyboardInterrupt
        run.stop_signal = signum
        logging.warning("%s: finishing this step, then writing a checkpoint.", signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class _FirstStep(keras.callbacks.Callback):
    """Says why the first step keeps the run silent: TensorFlow builds (traces and optimizes)
    the train step's graph, which takes minutes for a large supernet on several replicas; and
    how long that took, then and on the run's previous start."""

    def __init__(self, run: TrainingRun):
        super().__init__()
        self.run, self.began, self.done = run, None, False

    def on_train_batch_begin(self, batch, logs=None):
        if self.began is None:
            self.began = time.time()
            last = self.run.first_step_seconds
            strategy = self.run.strategy
            logging.info(
                "Building the train step's graph for %d replica(s) in this process (%d in all); the first step "
                "waits for it%s.",
                strategy.num_replicas_in_sync // distribute.workers(strategy),
                strategy.num_replicas_in_sync,
                f" (on this run's last start: {last:.0f} s)" if last else "",
            )

    def on_train_batch_end(self, batch, logs=None):
        if not self.done:
            self.done = True
            self.run.first_step_seconds = round(time.time() - self.began, 1)
            logging.info("Train step built; the first step took %.1f s.", self.run.first_step_seconds)


class _EpochEnd(keras.callbacks.Callback):
    """Sums the step outputs the run names over each epoch and times it; counts the epoch, lets
    the run record it, writes the checkpoints (each epoch's, and mid-epoch ones every N steps or
    minutes or on a signal), stops when asked."""

    def __init__(self, run: TrainingRun, stop_at_epoch: int | None):
        super().__init__()
        self.run, self.stop_at_epoch = run, stop_at_epoch

    def on_epoch_begin(self, epoch, logs=None):
        run = self.run
        logging.info("Epoch %d/%d", epoch + 1, run.epochs)
        if not run.offset:  # a resumed epoch keeps the sums of its steps before the checkpoint
            run.sums = dict.fromkeys(run.SUMMED, 0.0)
        run.epoch_began = time.time()

    def on_train_batch_end(self, batch, logs=None):
        run = self.run
        for key in run.sums:
            run.sums[key] += float(logs[key])
        run.batch = run.offset + batch + 1
        if run.batch == run.steps_per_epoch:
            return  # the epoch's end checkpoints
        every, minutes = run.checkpointing.checkpoint_every_steps, run.checkpointing.checkpoint_every_minutes
        if (
            run.stop_signal
            or (every and (run.epoch * run.steps_per_epoch + run.batch) % every == 0)
            or (minutes and time.time() - run.last_save >= 60 * minutes)
        ):
            run.save()
        if run.stop_signal:
            raise Interrupted(run)

    def on_epoch_end(self, epoch, logs=None):
        run = self.run
        run.epoch, run.batch, run.offset = epoch + 1, 0, 0
        run.end_epoch(logs or {})
        if run.epoch % run.checkpoint_every == 0 or run.epoch == run.epochs or run.stop_signal:
            run.save()
        if run.stop_signal:
            raise Interrupted(run)
        if self.stop_at_epoch is not None and run.epoch >= self.stop_at_epoch:
            self.model.stop_training = True


class Progress(keras.callbacks.Callback):
    """Progress of each epoch, on the chief only. On a terminal, Keras' progress bar; when the
    output is a file (a log, a scheduler's capture), plain lines instead of the bar's redraws:
    one every tenth of an epoch. Either way one summary line per epoch as it ends. `values(logs)`
    gives the (name, value) pairs to show; names in `stateful` are shown as they are, the others
    averaged over the epoch's steps so far."""

    def __init__(self, run: TrainingRun, values, stateful=()):
        super().__init__()
        self.run, self.values, self.stateful = run, values, list(stateful)
        self.bar, self.terminal = None, sys.stdout.isatty()
        self.sums, self.steps, self.began = {}, 0, 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.bar = keras.utils.Progbar(
            self.run.steps_per_epoch, stateful_metrics=self.stateful, verbose=int(self.terminal and self.run.is_chief)
        )
        self.sums, self.steps, self.began = {}, 0, time.time()

    def on_train_batch_end(self, batch, logs=None):
        step = self.run.offset + batch + 1
        values = self.values(logs or {})
        self.bar.update(step, values)
        self.steps += 1
        for name, value in values:
            self.sums[name] = float(value) if name in self.stateful else self.sums.get(name, 0.0) + float(value)
        total = self.run.steps_per_epoch
        if self.run.is_chief and (step == total or (not self.terminal and step % max(1, total // 10) == 0)):
            shown = ", ".join(
                f"{name} {value if name in self.stateful else value / self.steps:.4g}"
                for name, value in self.sums.items()
            )
            logging.info(
                "epoch %d/%d, step %d/%d: %s (%.1f s)",
                self.run.epoch + 1,
                self.run.epochs,
                step,
                total,
                shown,
                time.time() - self.began,
            )
