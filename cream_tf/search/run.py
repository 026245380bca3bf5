"""`python main.py --mode=search`: the whole search, from data to a zoo of selected paths.

Layout of `model_dir` (written by the chief worker; names in cream_tf.folders):

    config.yaml           the resolved configuration
    checkpoints/          supernet, optimizer, meta network, board, sampler, history (every epoch)
    tensorboard/          scalars: loss, ce, kd, matching value, top-1, lr, board accuracy/FLOPs
    board.json            the prioritized board after every epoch
    search_result.json    the selected path, the evaluated board, figures and timings
    search_plot.png       top-1 against FLOPs for the sampled paths, the board and the winner
    zoo/board_NN/         zoo entry folders, weights inherited from the supernet: the winner and the
                          Pareto front's other paths (selection.export_paths: winner, pareto, all)

Training runs in `keras.Model.fit` (cream_tf.training); the per-step host work (sampling the
path, the learning rate, board admission) is a callback around each step.
"""

from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from cream_tf import atomic, folders
from cream_tf.callbacks import Progress
from cream_tf.config import SearchConfig
from cream_tf.flops import build_space
from cream_tf.optim import linear_decay
from cream_tf.search.board import Entry, PrioritizedBoard
from cream_tf.search.sampler import PathSampler
from cream_tf.search.trainer import SearchModel
from cream_tf.supernet import Supernet
from cream_tf.training import TrainingRun


class SearchRun(TrainingRun):
    """One search run in `model_dir`; `run()` resumes from the latest checkpoint there, then
    selects and exports."""

    RESULT_FILE = folders.SEARCH_RESULT_FILE
    REPORTING_KEYS = TrainingRun.REPORTING_KEYS + ("selection.",)
    SUMMED = ("loss", "correct", "count")

    def __init__(self, config: SearchConfig, model_dir, strategy: tf.distribute.Strategy | None = None):
        config.validate()
        self.config = config
        train = config.train
        super().__init__(
            model_dir,
            strategy,
            seed=train.seed,
            deterministic=train.deterministic,
            data_config=config.data,
            split="train",
            steps_per_epoch=train.steps_per_epoch,
            epochs=train.epochs,
            checkpointing=train,
        )
        cream = config.cream
        if cream.pick_method == "meta" and (
            train.epochs <= cream.warmup_epochs or self.steps_per_epoch <= cream.meta_update_every
        ):
            raise ValueError(
                f"cream.pick_method='meta' would never update the meta network: it updates every "
                f"cream.meta_update_every={cream.meta_update_every} steps of an epoch after the "
                f"cream.warmup_epochs={cream.warmup_epochs} warm-up epochs, and there are "
                f"{self.steps_per_epoch} steps per epoch and train.epochs={train.epochs}; valid are "
                "meta_update_every below the steps per epoch and more epochs than warm-up ones."
            )
        per_replica = config.data.batch_size // self.strategy.num_replicas_in_sync
        if cream.pick_method == "meta" and per_replica < 2 * cream.slice:
            raise ValueError(
                f"cream.slice={cream.slice} needs at least {2 * cream.slice} images per replica (the meta step "
                f"takes two slices of each replica's batch), and data.batch_size={config.data.batch_size} over "
                f"{self.strategy.num_replicas_in_sync} replicas gives {per_replica}; valid are a larger batch "
                "or a smaller slice."
            )
        self.space = build_space(config)
        s = config.space
        bounds = {}
        if s.latency_ms:
            from cream_tf import latency

            table = (s.latency_table, s.latency_precision, s.latency_threads, (s.flops_min, s.flops_max))
            predictor = latency.for_search(self.space, *table, s.latency_calibration)
            bounds = {"latency": predictor, "latency_range": s.latency_ms}
        self.sampler = PathSampler(
            self.space,
            (s.flops_min, s.flops_max),
            config.cream.prior,
            seed=train.seed,
            max_tries=config.cream.max_sampling_tries,
            **bounds,
        )
        with self.strategy.scope():
            self.supernet = Supernet(self.space)
            self.fit_model = SearchModel(self.supernet, config, config.data.batch_size)
            self.fit_model.compile(optimizer=None, jit_compile=train.jit_compile)
        self.board = PrioritizedBoard(config.cream.board_size, config.cream.accuracy_gap, by_latency=bool(s.latency_ms))
        # history: per step (macs, top-1, matching value m, teacher index (-1 without a teacher),
        # predicted latency in ms (0 without a latency bound))
        self.step, self.history, self.meta_updates = 0, [], 0

    # --- what the training skeleton asks for ------------------------------------------------

    def checkpoint_variables(self) -> dict[str, list]:
        m = self.fit_model
        return {
            "supernet": self.supernet.weights,
            "meta": m.meta.weights,
            "optimizer": m.path_optimizer.slots,
            "meta_optimizer": m.meta_optimizer.slots,
            "board": [m.board_images, m.board_probs, m.board_paths, m.board_count],
        }

    def host_state(self) -> dict:
        return {
            "step": self.step,
            "meta_updates": self.meta_updates,
            "sampler": self.sampler.state(),
            "board": [
                {"path": e.path, "accuracy": e.accuracy, "macs": e.macs, "latency_ms": e.latency_ms}
                for e in self.board.entries
            ],
            "history": self.history,
        }

    def set_host_state(self, state: dict) -> None:
        # (a run saved before the history recorded latency has four figures per step)
        self.step, self.history = state["step"], [(*h, 0.0)[:5] for h in state["history"]]
        self.meta_updates = state["meta_updates"]
        self.sampler.set_state(state["sampler"])
        images, probs = self.fit_model.board_images.numpy(), self.fit_model.board_probs.numpy()
        self.board.entries = [
            Entry(tuple(e["path"]), e["accuracy"], e["macs"], images[i], probs[i], e.get("latency_ms"))
            for i, e in enumerate(state["board"])
        ]

    def callbacks(self) -> list[keras.callbacks.Callback]:
        return [
            _SampleAndAdmit(self),
            Progress(self, self.progress_values, stateful=["board", "board_best", "board_worst"]),
        ]

    def progress_values(self, logs: dict) -> list[tuple[str, float]]:
        """What the progress bar and lines show: the step's loss and top-1, the board's size and
        its best and worst entries' accuracy (training-batch top-1 when admitted)."""
        values = [("loss", logs["loss"]), ("top1", _top1(logs)), ("board", len(self.board))]
        if self.board.entries:
            values += [("board_best", self.board.entries[0].accuracy), ("board_worst", self.board.entries[-1].accuracy)]
        return values

    def end_epoch(self, logs: dict) -> None:
        board = self.board.summary()
        self.scalars(
            self.step,
            {
                "epoch/loss": self.sums["loss"] / self.steps_per_epoch,
                "epoch/top1": 100.0 * self.sums["correct"] / self.sums["count"],
            }
            | (
                {
                    "board/best_top1": board[0]["accuracy"],
                    "board/worst_top1": board[-1]["accuracy"],
                    "board/best_mflops": board[0]["mflops"],
                    "board/worst_mflops": board[-1]["mflops"],
                }
                if board
                else {}
            ),
        )
        if self.is_chief:
            from cream_tf.search.selection import board_row

            rows = [board_row(self.space, rank, entry) for rank, entry in enumerate(self.board.entries)]
            atomic.write_json(self.model_dir / folders.BOARD_FILE, {"epoch": self.epoch, "board": rows})

    def learning_rate(self, step: int) -> float:
        train = self.config.train
        return linear_decay(
            train.lr, int(train.warmup_lr_epochs * self.steps_per_epoch), train.epochs * self.steps_per_epoch, step
        )

    # --- the run ----------------------------------------------------------------------------

    def finish(self) -> dict:
        from cream_tf.search.selection import select_and_export

        return select_and_export(self)


def _top1(logs: dict) -> float:
    return 100.0 * float(logs["correct"]) / float(logs["count"])


class _SampleAndAdmit(keras.callbacks.Callback):
    """The host's part of every step: before it, the path, learning rate and flags; after it,
    board admission, history and TensorBoard."""

    def __init__(self, search: SearchRun):
        super().__init__()
        self.search = search
        self.macs = 0
        self.building = None  # when the step that builds the meta update's graph began

    def on_train_batch_begin(self, batch, logs=None):
        search, cream = self.search, self.search.config.cream
        warm = search.epoch < cream.warmup_epochs
        path, self.macs = search.sampler.sample()
        self.latency_ms = search.sampler.latency_ms(path)
        self.distill = cream.pick_method != "none" and not warm and len(search.board) > 0
        batch += search.offset  # the step in the epoch, also when resumed mid-epoch
        meta = cream.pick_method == "meta" and self.distill and batch > 0 and batch % cream.meta_update_every == 0
        self.lr = search.learning_rate(search.step)
        self.path = path
        search.fit_model.set_step(path, self.lr, self.distill, meta)
        self.meta = meta
        if meta and not search.fit_model.traces["meta"]:
            self.building = time.time()
            logging.info("First meta update since this start: building its graph; this step waits for it.")

    def on_train_batch_end(self, batch, logs=None):
        search, logs = self.search, logs or {}
        top1 = _top1(logs)
        if self.meta:
            search.meta_updates += 1
            self.log_meta_step(logs)
        if self.building:
            logging.info("Meta update built; its step took %.1f s.", time.time() - self.building)
            self.building = None
        if search.epoch >= search.config.cream.warmup_epochs and search.board.offer(
            Entry(
                tuple(int(c) for c in self.path),
                top1,
                int(self.macs),
                np.asarray(logs["images"]),
                np.asarray(logs["probs"]),
                self.latency_ms,
            )
        ):
            search.fit_model.load_board(search.board)
        teacher = int(logs["teacher"]) if self.distill else -1
        matching = round(float(logs["matching"]), 5)
        search.history.append((int(self.macs), round(top1, 3), matching, teacher, round(self.latency_ms or 0.0, 5)))
        search.step += 1
        if search.step % 10 == 0:
            search.scalars(
                search.step,
                {
                    "train/loss": logs["loss"],
                    "train/ce": logs["ce"],
                    "train/kd": logs["kd"],
                    "train/matching": logs["matching"],
                    "train/top1": top1,
                    "train/lr": self.lr,
                    "train/mflops": self.macs / 1e6,
                    **({} if self.latency_ms is None else {"train/latency_ms": self.latency_ms}),
                },
            )

    def log_meta_step(self, logs: dict) -> None:
        """What shows that the meta network learns: its gradient before clipping, its norm and
        how far this update moved it, and the matching values and teachers since the last update."""
        search = self.search
        names = {
            "grad_norm": "meta_grad_norm",
            "norm": "meta_norm",
            "change": "meta_change",
            "val_loss": "meta_val_loss",
            "matching": "meta_matching",
        }
        search.scalars(search.step, {f"meta/{name}": logs[key] for name, key in names.items()})
        since = [row for row in search.history[-search.config.cream.meta_update_every :] if row[3] >= 0]
        if search.writer is not None and since:
            with search.writer.as_default(step=search.step):
                tf.summary.histogram("meta/matching_values", np.array([row[2] for row in since], np.float32))
                tf.summary.histogram(
                    "meta/teacher_index",
                    np.array([row[3] for row in since], np.float32),
                    buckets=search.config.cream.board_size,
                )
