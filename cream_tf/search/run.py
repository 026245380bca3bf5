"""`python main.py --mode=search`: the whole search, from data to a zoo of selected paths.

Layout of `model_dir` (written by the chief worker):

    config.yaml           the resolved configuration
    checkpoints/          supernet, optimizer, meta network, board (every epoch) + host_state-N.json
    tensorboard/          scalars: loss, ce, kd, matching value, top-1, lr, board accuracy/FLOPs
    board.json            the prioritized board after every epoch
    search_result.json    the selected path, the evaluated board, figures and timings
    search_plot.png       top-1 against FLOPs for the sampled paths, the board and the winner
    zoo/board_NN/         one zoo entry folder per board path, weights inherited from the supernet
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from cream_tf import atomic, config as config_lib, data
from cream_tf.arch import SearchSpace
from cream_tf.config import SearchConfig
from cream_tf.export import write_entry
from cream_tf.flops import cost_of, depths_for_flops_range
from cream_tf.search.board import Entry, PrioritizedBoard
from cream_tf.search.sampler import PathSampler
from cream_tf.search.trainer import CreamTrainer
from cream_tf.supernet import Supernet

PICK_METHODS = ("meta", "top1", "none")


def make_strategy() -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy when TF_CONFIG names a cluster, else MirroredStrategy over
    the local GPUs (or the CPU when there is none)."""
    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.MirroredStrategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this worker writes results: the chief, or worker 0 of a cluster without one."""
    resolver = getattr(strategy, "cluster_resolver", None)
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if not cluster or resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in cluster


def build_space(config: SearchConfig) -> SearchSpace:
    d, s = config.data, config.space
    settings = dict(input_size=d.image_size, in_channels=d.channels, num_classes=d.num_classes,
                    stem_channels=s.stem_channels, stem_stride=s.stem_stride, dropout=s.dropout,
                    drop_path=s.drop_path)
    depths = tuple(s.depths) or depths_for_flops_range(s.flops_min, s.flops_max, **settings)
    return SearchSpace.create(depths, **settings)


def check_config(config: SearchConfig) -> None:
    """Everything that can be checked before training starts, with what would be valid."""
    if config.cream.pick_method not in PICK_METHODS:
        raise ValueError(f"cream.pick_method {config.cream.pick_method!r} is not one of {PICK_METHODS}.")
    if config.cream.slice < 1 or 2 * config.cream.slice > config.data.batch_size:
        raise ValueError(f"cream.slice {config.cream.slice} must be >= 1 and at most half the batch "
                         f"({config.data.batch_size}): the meta step uses two slices of a batch.")
    for key in ("epochs", "meta_update_every"):
        source = config.train if key == "epochs" else config.cream
        if getattr(source, key) < 1:
            raise ValueError(f"{key} must be >= 1; got {getattr(source, key)}.")
    if config.train.lr <= 0:
        raise ValueError(f"train.lr must be > 0; got {config.train.lr}.")


class Search:
    """One search run in `model_dir`; `run()` resumes from the latest checkpoint there."""

    def __init__(self, config: SearchConfig, model_dir, strategy: tf.distribute.Strategy | None = None):
        check_config(config)
        self.config = config
        self.model_dir = Path(model_dir)
        self.strategy = strategy or make_strategy()
        train = config.train
        if train.deterministic:
            tf.config.experimental.enable_op_determinism()
        keras.utils.set_random_seed(train.seed)
        self.space = build_space(config)
        self.sampler = PathSampler(self.space, (config.space.flops_min, config.space.flops_max),
                                   config.cream.prior, seed=train.seed, max_tries=config.cream.max_sampling_tries)
        # The data is checked (present, labels in range) before any model is built.
        available = data.num_examples(config.data, "train")
        self.steps_per_epoch = train.steps_per_epoch or available // config.data.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(f"The training split has fewer images than one batch of {config.data.batch_size}.")
        with self.strategy.scope():
            self.supernet = Supernet(self.space)
        self.trainer = CreamTrainer(self.supernet, config, config.data.batch_size, self.strategy)
        self.board = PrioritizedBoard(config.cream.board_size, config.cream.accuracy_gap)
        self.checkpoint = tf.train.Checkpoint(**self.trainer.checkpoint_objects())
        self.epoch, self.step, self.history = 0, 0, []  # history: (macs, top-1) per step

    # --- files ------------------------------------------------------------------------------

    @property
    def is_chief(self) -> bool:
        return is_chief(self.strategy)

    def _checkpoint_dir(self) -> Path:
        if self.is_chief:
            return self.model_dir / "checkpoints"
        # Every worker takes part in saving; only the chief's copy is kept.
        return Path(tempfile.mkdtemp(prefix="cream-worker-checkpoint-"))

    def save(self) -> None:
        directory = self._checkpoint_dir()
        directory.mkdir(parents=True, exist_ok=True)
        manager = tf.train.CheckpointManager(self.checkpoint, str(directory), max_to_keep=2)
        path = manager.save()
        if self.is_chief:
            number = int(path.rsplit("-", 1)[1])
            atomic.write_json(directory / f"host_state-{number}.json", {
                "epoch": self.epoch, "step": self.step, "sampler": self.sampler.state(),
                "board": [{"path": e.path, "accuracy": e.accuracy, "macs": e.macs} for e in self.board.entries],
                "history": self.history})
            for old in directory.glob("host_state-*.json"):
                if not Path(str(directory / f"ckpt-{old.stem.split('-')[1]}") + ".index").exists():
                    old.unlink()
        else:
            shutil.rmtree(directory, ignore_errors=True)

    def restore(self) -> bool:
        latest = tf.train.latest_checkpoint(str(self.model_dir / "checkpoints"))
        if not latest:
            return False
        self.checkpoint.restore(latest).assert_existing_objects_matched()
        number = int(latest.rsplit("-", 1)[1])
        state = json.loads((self.model_dir / "checkpoints" / f"host_state-{number}.json").read_text())
        self.epoch, self.step, self.history = state["epoch"], state["step"], [tuple(h) for h in state["history"]]
        self.sampler.set_state(state["sampler"])
        images, probs = self.trainer.board_images.numpy(), self.trainer.board_probs.numpy()
        self.board.entries = [Entry(tuple(e["path"]), e["accuracy"], e["macs"], images[i], probs[i])
                              for i, e in enumerate(state["board"])]
        logging.info("Resumed from %s at epoch %d (step %d).", latest, self.epoch, self.step)
        return True

    # --- training ---------------------------------------------------------------------------

    def learning_rate(self, step: int) -> float:
        """Linear warm-up (optional), then linear decay to zero at the last step."""
        total = self.config.train.epochs * self.steps_per_epoch
        warmup = int(self.config.train.warmup_lr_epochs * self.steps_per_epoch)
        if step < warmup:
            return self.config.train.lr * (step + 1) / warmup
        return self.config.train.lr * max(0.0, 1.0 - (step - warmup) / max(1, total - warmup))

    def _dataset(self, epoch: int):
        config, seed = self.config.data, self.config.train.seed * 1000 + epoch

        def per_worker(context):  # an epoch's batches are the same whether or not the run resumed
            return data.load(config, "train", training=True, repeat=True,
                             batch_size=context.get_per_replica_batch_size(config.batch_size),
                             seed=seed + 7919 * context.input_pipeline_id)

        return self.strategy.distribute_datasets_from_function(per_worker)

    def train_epoch(self, writer) -> dict:
        cream, epoch = self.config.cream, self.epoch
        warm = epoch < cream.warmup_epochs
        progress = keras.utils.Progbar(self.steps_per_epoch, stateful_metrics=["board"],
                                       verbose=1 if self.is_chief else 0)
        sums = {"loss": 0.0, "top1": 0.0}
        iterator = iter(self._dataset(epoch))
        for i in range(self.steps_per_epoch):
            images, labels = next(iterator)
            path, macs = self.sampler.sample()
            lr = self.learning_rate(self.step)
            distill = cream.pick_method != "none" and not warm and len(self.board) > 0
            path_t, lr_t = tf.constant(path), tf.constant(lr, tf.float32)
            if cream.pick_method == "meta" and distill and i > 0 and i % cream.meta_update_every == 0:
                meta = self.trainer.meta_step_fn(images, labels, path_t, lr_t, tf.constant(cream.meta_lr))
                self._scalars(writer, {f"meta/{k}": float(v) for k, v in meta.items()})
            out = {k: v.numpy() for k, v in self.trainer.train_step_fn(
                images, labels, path_t, lr_t, tf.constant(distill)).items()}
            top1 = 100.0 * float(out["correct"]) / float(out["count"])
            if not warm and self.board.offer(Entry(tuple(int(c) for c in path), top1, int(macs),
                                                   out["images"], out["probs"])):
                self.trainer.load_board(self.board)
            self.history.append((int(macs), round(top1, 3)))
            self.step += 1
            sums["loss"] += float(out["loss"])
            sums["top1"] += top1
            if self.step % 10 == 0:
                self._scalars(writer, {"train/loss": out["loss"], "train/ce": out["ce"], "train/kd": out["kd"],
                                       "train/matching": out["matching"], "train/top1": top1,
                                       "train/lr": lr, "train/mflops": macs / 1e6})
            progress.update(i + 1, [("loss", float(out["loss"])), ("top1", top1), ("board", len(self.board))])
        return {k: v / self.steps_per_epoch for k, v in sums.items()}

    def _scalars(self, writer, values: dict) -> None:
        if writer is None:
            return
        with writer.as_default(step=self.step):
            for name, value in values.items():
                tf.summary.scalar(name, float(value))

    def run(self, stop_at_epoch: int | None = None) -> dict | None:
        """Trains (resuming when a checkpoint exists), then selects and exports; returns the result.

        stop_at_epoch: return None after that epoch's checkpoint, as an interrupted run would.
        """
        start = time.time()
        if self.is_chief:
            self.model_dir.mkdir(parents=True, exist_ok=True)
            config_lib.save(self.config, self.model_dir / "config.yaml")
        self.restore()
        writer = tf.summary.create_file_writer(str(self.model_dir / "tensorboard")) if self.is_chief else None
        while self.epoch < self.config.train.epochs:
            logging.info("Epoch %d/%d", self.epoch + 1, self.config.train.epochs)
            means = self.train_epoch(writer)
            self.epoch += 1
            board = self.board.summary()
            self._scalars(writer, {"epoch/loss": means["loss"], "epoch/top1": means["top1"]} | ({
                "board/best_top1": board[0]["accuracy"], "board/worst_top1": board[-1]["accuracy"],
                "board/best_mflops": board[0]["mflops"], "board/worst_mflops": board[-1]["mflops"]} if board else {}))
            if self.is_chief:
                atomic.write_json(self.model_dir / "board.json", {"epoch": self.epoch, "board": board})
            self.save()
            if stop_at_epoch is not None and self.epoch >= stop_at_epoch < self.config.train.epochs:
                return None
        train_seconds = time.time() - start
        if not self.is_chief:
            return None
        from cream_tf.search.selection import select_and_export

        result = select_and_export(self)
        result["timing"] = {"train_seconds": round(train_seconds, 1),
                            "total_seconds": round(time.time() - start, 1)}
        atomic.write_json(self.model_dir / "search_result.json", result)
        return result
