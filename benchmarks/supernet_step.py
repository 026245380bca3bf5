"""Cost of a supernet training step relative to a plain training step of the same child net.

Same process, same batch, same path; the kinds of step are timed in turn, several rounds, and
the median of each is compared (targets: <= 1.15x single-path, <= 1.6x with distillation and
meta scoring over a full board). Every step runs as `fit` runs it (Keras' train function via
`train_on_batch`); one more row calls the supernet's train step as a bare tf.function, which
measures what Keras' driver adds to a step.

    .venv/bin/python benchmarks/supernet_step.py                 # the default search's supernet
    .venv/bin/python benchmarks/supernet_step.py --smoke         # seconds; proves the script works
    .venv/bin/python benchmarks/supernet_step.py --config_file=configs/search/imagenet.yaml \\
        --batch_size=64 --depths=2,2,2,2,2

Prints a Markdown table and the machine it ran on.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
from _common import machine

from cream_tf import config as config_lib
from cream_tf.flops import build_space
from cream_tf.search.board import Entry, PrioritizedBoard
from cream_tf.search.trainer import SearchModel
from cream_tf.supernet import Supernet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def plain_child(model, label_smoothing):
    """A textbook Keras model: label-smoothed CE, SGD with Nesterov momentum, Keras' own train step."""
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing),
    )
    return model


def wait(out) -> float:
    return float(np.asarray(out["loss"] if isinstance(out, dict) else out))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_file", default=os.path.join(REPO, "configs", "search", "fashion_mnist.yaml"))
    parser.add_argument("--batch_size", type=int, default=0, help="default: the config's")
    parser.add_argument("--depths", default="", help="e.g. 2,2,2,2,2 (default: the config's)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round and kind")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="a tiny space, 2 steps x 2 rounds")
    args = parser.parse_args()

    config = config_lib.load(config_lib.SearchConfig, args.config_file)
    if args.smoke:
        config.data.image_size, config.space.stem_channels, config.space.stem_stride = 16, 8, 1
        config.space.depths, config.data.batch_size = (1, 1, 1, 1, 1), 16
        args.steps, args.rounds = 2, 2
    if args.depths:
        config.space.depths = tuple(int(d) for d in args.depths.split(","))
    if args.batch_size:
        config.data.batch_size = args.batch_size
    config.space.dropout = 0.0
    batch = config.data.batch_size
    keras.utils.set_random_seed(0)
    space = build_space(config)
    supernet = Supernet(space)
    trainer = SearchModel(supernet, config, batch)
    trainer.compile(optimizer=None)
    rng = np.random.default_rng(0)
    t = space.template
    images = rng.normal(size=(batch, t.input_size, t.input_size, t.in_channels)).astype("float32")
    labels = rng.integers(0, t.num_classes, batch).astype("int32")
    path = np.full(len(space.positions), 3, np.int32)  # the prior's favourite: k5 e6 everywhere
    board = PrioritizedBoard(config.cream.board_size, config.cream.accuracy_gap)
    for k in range(config.cream.board_size):  # a full board: scoring costs its most
        entry_path = rng.integers(0, 6, len(space.positions)).astype(np.int32)
        board.offer(
            Entry(
                tuple(entry_path),
                50.0 + k,
                k,
                images[: config.cream.slice],
                rng.dirichlet(np.ones(t.num_classes), config.cream.slice).astype("float32"),
            )
        )
    trainer.load_board(board)
    plain = plain_child(supernet.extract_child(path), config.train.label_smoothing)
    onehot = np.eye(t.num_classes, dtype="float32")[labels]
    bare = tf.function(lambda x, y: trainer.train_step((x, y)))

    def supernet_step(distill, driver="keras"):
        def run():
            trainer.set_step(path, 0.05, distill)
            if driver == "keras":
                return trainer.train_on_batch(images, labels, return_dict=True)
            return bare(images, labels)

        return run

    kinds = {
        "plain child step": lambda: plain.train_on_batch(images, onehot),
        "supernet, single path": supernet_step(False),
        "supernet, distillation + meta scoring": supernet_step(True),
        "supernet, single path, bare tf.function": supernet_step(False, "bare"),
    }
    for name, run in kinds.items():  # trace and warm up outside the timing
        start = time.perf_counter()
        for _ in range(3):
            wait(run())
        print(f"warm-up of {name}: {time.perf_counter() - start:.1f} s (includes tracing)", flush=True)
    times = {name: [] for name in kinds}
    for _ in range(args.rounds):
        for name, run in kinds.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                out = run()
            wait(out)  # the last step has finished
            times[name].append((time.perf_counter() - start) / args.steps)
    base = statistics.median(times["plain child step"])
    print(
        f"\nSupernet step cost, path {space.arch(list(path)).path} of space depths {list(space.depths)}, "
        f"input {t.input_size}x{t.input_size}x{t.in_channels}, batch {batch}, board {config.cream.board_size} "
        f"x {config.cream.slice} images; median of {args.rounds} rounds x {args.steps} steps"
    )
    print(f"Machine: {machine()}\n")
    print("| step | ms/step | ratio to plain | target |")
    print("|---|---|---|---|")
    targets = {
        "supernet, single path": "<= 1.15x",
        "supernet, distillation + meta scoring": "<= 1.6x",
        "supernet, single path, bare tf.function": "",
    }
    for name in kinds:
        median = statistics.median(times[name])
        print(f"| {name} | {1000 * median:.1f} | {median / base:.2f}x | {targets.get(name, '')} |")
    keras_step, bare_step = (statistics.median(times[k]) for k in list(kinds)[1::2])
    print(
        f"\nKeras' driver (train_on_batch, as fit runs a step) over the bare tf.function: "
        f"{1000 * (keras_step - bare_step):+.1f} ms per step ({keras_step / bare_step:.3f}x)"
    )


if __name__ == "__main__":
    main()
