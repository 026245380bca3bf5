"""Training throughput of our Keras child nets against timm's PyTorch build of the same nets.

One training step = forward (training mode), cross-entropy, backward, SGD with momentum 0.9
(lr 0.01, no weight decay, no dropout), on the same random batch and the same weights (timm's
initialization, copied into ours). Ours: cream_tf's functional model as `--mode=retrain`
trains it (fused BatchNorm), the step in a tf.function. PyTorch: tests/torch_reference.py's timm MobileNetV3,
eager, NCHW. Both run
in one process pinned to `--threads` cores (TensorFlow intra- and inter-op pools and
torch.set_num_threads all set to that number); the two sides alternate, `--steps` steps per
side per round, and the figures are medians over `--rounds` rounds (target: ours >= 1.3x).

    .venv/bin/python benchmarks/train_throughput.py              # cream_287 @224 b32, winner @28 b128
    .venv/bin/python benchmarks/train_throughput.py --smoke      # seconds; proves the script works
    .venv/bin/python benchmarks/train_throughput.py --threads 1 --rounds 7

Prints a Markdown table and the machine it ran on.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))  # torch_reference, the timm build the tests use

# torch (and timm's torchvision) before TensorFlow: the other order segfaults (tests/conftest.py).
import torch
from torch_reference import numpy_state_dict, timm_cream

# isort: split
import keras
import numpy as np
import tensorflow as tf
from _common import alternate, machine, speedup, table, use_cores

from cream_tf import zoo
from cream_tf.arch import Arch
from cream_tf.childnet import build_child
from cream_tf.convert import load_state_dict

LR, MOMENTUM = 0.01, 0.9
# name -> (architecture, batch); the Fashion-MNIST net is the default search's winner.
NETS = {
    "cream_287": (zoo.arch_of("cream_287"), 32),
    "search winner (Fashion-MNIST)": (Arch.parse("[3][3][3,3,3][3][3]@28;in=1;classes=10;stem=16/1"), 128),
}
SMOKE_SIZES = {"cream_287": (32, 2), "search winner (Fashion-MNIST)": (28, 8)}  # input, batch


def keras_step(model):
    optimizer = keras.optimizers.SGD(LR, momentum=MOMENTUM)
    optimizer.build(model.trainable_variables)

    @tf.function
    def step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    return step


def torch_step(model):
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    model.train()

    def step(images, labels):
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        return loss

    return step


def measure(arch: Arch, batch: int, steps: int, rounds: int) -> dict:
    reference = timm_cream(arch.choices, num_classes=arch.num_classes, in_chans=arch.in_channels)
    model = build_child(arch.replace(dropout=0.0, drop_path=0.0), fused_bn=True)
    load_state_dict(model, numpy_state_dict(reference))
    rng = np.random.default_rng(0)
    images = rng.normal(size=(batch, arch.input_size, arch.input_size, arch.in_channels)).astype("float32")
    labels = rng.integers(0, arch.num_classes, batch)
    ours, theirs = keras_step(model), torch_step(reference)
    tf_images, tf_labels = tf.constant(images), tf.constant(labels, tf.int32)
    torch_images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    torch_labels = torch.from_numpy(labels.astype(np.int64))
    sides = {
        "ours": lambda: float(ours(tf_images, tf_labels)),
        "pytorch": lambda: float(theirs(torch_images, torch_labels).item()),
    }
    start = time.perf_counter()
    for run in sides.values():  # trace and warm up outside the timing
        for _ in range(2):
            run()
    warmup = time.perf_counter() - start
    times = alternate(sides, rounds, steps)
    return {
        "ours": batch / statistics.median(times["ours"]),
        "pytorch": batch / statistics.median(times["pytorch"]),
        "ratio": speedup(times, "ours", "pytorch"),
        "warmup": warmup,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=0, help="default: every core (1 with --smoke)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per side and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny inputs and batches, 1 step x 2 rounds")
    args = parser.parse_args()
    if args.smoke:
        # One thread: on a busy 2-core machine (CI) two OpenMP threads can wait on each other
        # for seconds at every barrier, which would make a smoke run crawl.
        args.steps, args.rounds, args.threads = 1, 2, args.threads or 1
    args.threads = args.threads or len(os.sched_getaffinity(0))
    use_cores(args.threads)
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    torch.set_num_threads(args.threads)
    keras.utils.set_random_seed(0)
    torch.manual_seed(0)

    rows = []
    for name, (arch, batch) in NETS.items():
        if args.smoke:
            size, batch = SMOKE_SIZES[name]
            arch = arch.replace(input_size=size)
        result = measure(arch, batch, args.steps, args.rounds)
        print(f"{name}: warm-up {result['warmup']:.1f} s (includes tracing)", flush=True)
        rows.append(
            (
                name,
                f"{arch.input_size}x{arch.input_size}x{arch.in_channels}",
                batch,
                f"{result['ours']:.1f}",
                f"{result['pytorch']:.1f}",
                f"{result['ratio']:.2f}x",
                ">= 1.3x",
            )
        )
    print(
        f"\nTraining throughput (forward + backward + SGD momentum update), {args.threads} thread(s); "
        f"median of {args.rounds} rounds x {args.steps} steps, sides alternating"
    )
    print(f"Machine: {machine(('tensorflow', 'keras', 'torch', 'timm'))}\n")
    print(table(("net", "input", "batch", "ours (images/s)", "PyTorch (images/s)", "ours / PyTorch", "target"), rows))


if __name__ == "__main__":
    main()
