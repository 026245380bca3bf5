"""What happens inside a search: how fast the supernet learns under each weight init, and whether
the meta matching network learns.

    .venv/bin/python benchmarks/search_dynamics.py          # both studies below, ~10 min on 2 cores
    .venv/bin/python benchmarks/search_dynamics.py init     # official He fan-out init against Keras' glorot
    .venv/bin/python benchmarks/search_dynamics.py meta     # the default search's meta network
    .venv/bin/python benchmarks/search_dynamics.py meta --overrides=cream.meta_lr=1e-4,cream.meta_update_every=50
    .venv/bin/python benchmarks/search_dynamics.py --smoke  # under a minute; proves the script works

`init` trains the default search's supernet through its warm-up (uniform path sampling under the
prior, no distillation) once per init, same seed and data, and prints the mean training top-1 per
window of steps plus the logits' scale of a fresh net. `meta` runs a whole search (no selection)
and prints how far the meta weights moved, the spread of the matching value m over the
distillation steps, the pre-clip meta-gradient norms from TensorBoard and the teacher counts.
Prints Markdown tables and the machine it ran on.
"""

from __future__ import annotations

import argparse
import glob
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
from _common import SMOKE_CANDIDATES, machine

from cream_tf import blocks
from cream_tf import config as config_lib
from cream_tf.search.run import SearchRun

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = (
    "data.image_size=16,data.validation_size=256,data.batch_size=32,space.depths=[1,1,1,1,1],space.stem_channels=8,"
    "cream.board_size=3,cream.warmup_epochs=1,cream.meta_update_every=2,train.epochs=2,train.steps_per_epoch=4,"
    + SMOKE_CANDIDATES
)
INITS = {
    # timm's _init_weight_goog, which the official supernet and child nets call: convolutions
    # normal(0, sqrt(2 / fan_out)), fan_out = k*k*out/groups (Keras' fan-out of a depthwise
    # kernel (k, k, C, 1) is k*k, the same); the classifier uniform(+-1/sqrt(out)).
    "official (He normal, fan-out)": (
        lambda: keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal"),
        lambda: keras.initializers.VarianceScaling(1.0 / 3.0, "fan_out", "uniform"),
    ),
    "cream_tf (blocks.conv_initializer)": (blocks.conv_initializer, blocks.dense_initializer),
}


def search(args, overrides: str, folder: str) -> SearchRun:
    overrides = ",".join(o for o in (overrides, args.overrides, SMOKE if args.smoke else "") if o)
    return SearchRun(config_lib.load(config_lib.SearchConfig, args.config_file, overrides), folder)


def history(run: SearchRun) -> np.ndarray:
    """Rows of (MACs, top-1, m, teacher) per training step."""
    return np.array(run.history, dtype=np.float64)


def compare_inits(args) -> None:
    rows = {}
    for name, (conv, dense) in INITS.items():
        blocks.conv_initializer, blocks.dense_initializer = conv, dense
        keras.utils.set_random_seed(0)
        with tempfile.TemporaryDirectory() as folder:
            # pick_method none: a warm-up-only search, which the meta check would refuse
            run = search(args, f"cream.pick_method=none,train.epochs={args.epochs}", folder)
            data = run.config.data
            images = tf.random.stateless_normal([8, data.image_size, data.image_size, data.channels], seed=[1, 2])
            logits = run.supernet(images, path=tf.constant(run.sampler.sample()[0]), training=False)
            began = time.time()
            run.train()
            top1 = history(run)[:, 1]
        windows = np.array_split(top1, max(1, len(top1) // args.window))
        rows[name] = (float(np.std(logits)), [float(w.mean()) for w in windows], time.time() - began)
    print(f"Supernet warm-up by weight init, {args.config_file}; machine: {machine()}\n")
    steps = len(next(iter(rows.values()))[1])
    print("| init | fresh logits std | " + " | ".join(f"top-1, window {i + 1}" for i in range(steps)) + " | seconds |")
    print("|---|---|" + "---|" * steps + "---|")
    for name, (scale, means, seconds) in rows.items():
        print(f"| {name} | {scale:.1e} | " + " | ".join(f"{m:.1f}" for m in means) + f" | {seconds:.0f} |")


def meta_dynamics(args) -> None:
    with tempfile.TemporaryDirectory() as folder:
        run = search(args, "", folder)
        before = np.concatenate([v.numpy().ravel() for v in run.fit_model.meta.trainable_variables])
        began = time.time()
        run.train()
        after = np.concatenate([v.numpy().ravel() for v in run.fit_model.meta.trainable_variables])
        rows = history(run)
        grads = [
            float(tf.make_ndarray(value.tensor))
            for file in glob.glob(os.path.join(folder, "tensorboard", "*"))
            for event in tf.compat.v1.train.summary_iterator(file)
            for value in event.summary.value
            if value.tag == "meta/grad_norm"
        ]
    distilled = rows[rows[:, 3] >= 0]
    teachers = np.bincount(distilled[:, 3].astype(int), minlength=run.config.cream.board_size)
    moved = np.linalg.norm(after - before) / np.linalg.norm(before)
    print(f"Meta matching network, {args.config_file} {args.overrides}; machine: {machine()}\n")
    print("| meta updates | weights moved (of initial norm) | m mean | m sd | meta-grad norm (median) | teachers | s |")
    print("|---|---|---|---|---|---|---|")
    m = distilled[:, 2] if len(distilled) else np.array([np.nan])
    print(
        f"| {run.meta_updates} | {100 * moved:.2f}% | {m.mean():.3f} | {m.std():.3f} | "
        f"{np.median(grads) if grads else float('nan'):.2e} | {teachers.tolist()} | {time.time() - began:.0f} |"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", nargs="?", choices=("init", "meta"), help="one study (default: both)")
    parser.add_argument("--config_file", default=os.path.join(REPO, "configs", "search", "fashion_mnist.yaml"))
    parser.add_argument("--overrides", default="", help="config overrides, as --params_override takes them")
    parser.add_argument("--epochs", type=int, default=2, help="init: warm-up epochs trained per init")
    parser.add_argument("--window", type=int, default=50, help="init: steps averaged per column")
    parser.add_argument("--smoke", action="store_true", help="tiny supernet, a few steps")
    args = parser.parse_args()
    if args.smoke:
        args.epochs, args.window = 1, 2
    tf.get_logger().setLevel("ERROR")
    if args.study in (None, "init"):
        compare_inits(args)
    if args.study in (None, "meta"):
        print()
        meta_dynamics(args)


if __name__ == "__main__":
    main()
