"""The Keras callbacks every run (search, retrain, QAT) trains with, beside its own: one small
class per job, each named for what it does. They work on a cream_tf.training.TrainingRun.

Why our own beside Keras' (Progbar, and TerminateOnNaN, which StopOnNonFiniteLoss extends):
Keras' BackupAndRestore saves the model's weights only, not host state such as the search's
sampler, board and history, nor variables outside the model (the search's path-wise
optimizer), and restarts an epoch's data from its start; exact resume needs all of it.
"""

from __future__ import annotations

import math
import sys
import time

import keras
from absl import logging

from cream_tf import RunError, distribute, folders
from cream_tf.run_guard import Interrupted


class StopOnNonFiniteLoss(keras.callbacks.TerminateOnNaN):
    """Keras' TerminateOnNaN, raising: a non-finite loss or gradient norm ends the run at once,
    before the step reaches the board or a checkpoint, with what to try."""

    def __init__(self, run):
        super().__init__(raise_error=True)
        self.run = run

    def on_batch_end(self, batch, logs=None):
        logs = logs or {}
        for key in ("loss", "grad_norm"):
            if key in logs and not math.isfinite(float(logs[key])):
                run = self.run
                raise RunError(
                    f"Training diverged in epoch {run.epoch + 1}, step {run.offset + batch + 1}: {key} is "
                    f"{float(logs[key])} (train.lr={run.config.train.lr}). Nothing was exported; the checkpoints "
                    f"in {run.model_dir / folders.CHECKPOINTS} are from before it. Try a lower train.lr, or check "
                    "the data (pixel range, labels)."
                )


class ReportGraphBuild(keras.callbacks.Callback):
    """Says why the first step keeps the run silent: TensorFlow builds (traces and optimizes)
    the train step's graph, which takes minutes for a large supernet on several replicas; and
    how long that took, then and on the run's previous start."""

    def __init__(self, run):
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


class CountSteps(keras.callbacks.Callback):
    """Keeps the run's place (epoch, step in it, steps since the last checkpoint), sums the step
    outputs the run names (`SUMMED`) over each epoch, hands each finished epoch to the run's
    `end_epoch`, and stops `fit` after `stop_at_epoch`."""

    def __init__(self, run, stop_at_epoch: int | None):
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
        run.steps_since_save += 1

    def on_epoch_end(self, epoch, logs=None):
        run = self.run
        run.epoch, run.batch, run.offset = epoch + 1, 0, 0
        run.end_epoch(logs or {})
        if self.stop_at_epoch is not None and run.epoch >= self.stop_at_epoch:
            self.model.stop_training = True


class WriteCheckpoints(keras.callbacks.Callback):
    """Writes the run's checkpoints: every `checkpoint_every` epochs and at the last; inside an
    epoch every `checkpoint_every_steps` steps or `checkpoint_every_minutes`; and after the step
    a signal arrived in, then raises Interrupted. Runs after CountSteps."""

    def __init__(self, run):
        super().__init__()
        self.run = run

    def on_train_batch_end(self, batch, logs=None):
        run = self.run
        if run.batch == run.steps_per_epoch:
            return  # the epoch's end checkpoints
        every, minutes = run.checkpointing.checkpoint_every_steps, run.checkpointing.checkpoint_every_minutes
        if (
            run.stop_signal
            or (every and (run.epoch * run.steps_per_epoch + run.batch) % every == 0)
            or (minutes and time.time() - run.last_save >= 60 * minutes)
        ):
            run.save()
        self._stop_if_signalled()

    def on_epoch_end(self, epoch, logs=None):
        run = self.run
        if run.epoch % run.checkpoint_every == 0 or run.epoch == run.epochs or run.stop_signal:
            run.save()
        self._stop_if_signalled()

    def _stop_if_signalled(self):
        run = self.run
        if run.stop_signal:
            raise Interrupted(run.stop_signal, run.epoch + 1, run.batch, run.model_dir / folders.CHECKPOINTS)


class Progress(keras.callbacks.Callback):
    """Progress of each epoch, on the chief only. On a terminal, Keras' progress bar; when the
    output is a file (a log, a scheduler's capture), plain lines instead of the bar's redraws:
    one every tenth of an epoch. Either way one summary line per epoch as it ends. `values(logs)`
    gives the (name, value) pairs to show; names in `stateful` are shown as they are, the others
    averaged over the epoch's steps so far."""

    def __init__(self, run, values, stateful=()):
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
