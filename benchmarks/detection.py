"""RetinaNet on the detection demo set with a Cream backbone against Model Garden's own
MobileNetV3-Large (about cream_43's multiply-adds) and -Small (about a quarter), trained the same
way (cream_tf.detection.garden's demo recipe: same input size, steps, schedule, FPN and head;
every backbone from fresh weights).

Every step is a user's command (`python -m cream_tf.detection ...`, Model Garden's drivers):
the demo set (made once), training with evaluation (`--mode=train_and_eval`), the on-device export
(with Model Garden's FLOPs count) and its float TFLite file. Reported per backbone: AP, AP50 and
AP75 of the last evaluation (Model Garden's COCO evaluator, read from its TensorBoard summaries);
training steps per second (the median of the driver's reports after the first; with
--speed_steps, of a separate short training per backbone, one after another, for when the machine
was shared while they trained); the multiply-adds of the detector's convolutions and of its
backbone's (the TF profiler's float ops / 2, at batch 1); and the TFLite file's batch-1 latency in
LiteRT with XNNPACK at one thread, the files timed in alternation (_common.alternate).

    .venv/bin/python benchmarks/detection.py --speed_steps=100   # three backbones, about 40 min on 2 cores
    .venv/bin/python benchmarks/detection.py --backbones=cream --steps=200
    .venv/bin/python benchmarks/detection.py --smoke          # a tiny set, cream only, 2 steps

Resumable: a backbone whose folder under --out holds its TFLite file is measured, not trained again.
Prints Markdown tables and the machine it ran on.
"""

from __future__ import annotations

import argparse
import atexit
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import alternate, machine, table

REPO = Path(__file__).resolve().parent.parent
BACKBONES = {b: f"retinanet_{b}_demo" for b in ("cream", "mobilenetv3large", "mobilenetv3small")}
STEPS_PER_SECOND = re.compile(r"train \| step:\s+\d+ \| steps/sec:\s+([\d.]+)")
# A line of the TF profiler's report (model_flops.txt): `name (self/total flops)`, e.g. 1.18m.
PROFILED = re.compile(r"^\s*(\S+) \(([\d.]+)([kmb]?)/[^)]*flops\)$", re.M)
CONVOLUTION = re.compile(r"/(Conv2D|depthwise|separable_conv2d(_\d+)?|MatMul)$")
TFLITE_NMS = "task.model.detection_generator.nms_version=tflite"
HEAD = (
    "fpn/",
    "retina_net_head/",
)  # the decoder's and the head's layers; the rest of the convolutions are the backbone's


def detection(log: Path, *args) -> str:
    """Runs `python -m cream_tf.detection ARGS`, its output in `log`; returns that output."""
    print(f"{log.stem}: python -m cream_tf.detection {' '.join(args)}", file=sys.stderr, flush=True)
    with open(log, "w") as out:
        done = subprocess.run(
            [sys.executable, "-m", "cream_tf.detection", *args], cwd=REPO, stdout=out, stderr=subprocess.STDOUT
        )
    if done.returncode != 0:
        raise SystemExit(f"{args[0]} failed; its log: {log}\n{log.read_text()[-3000:]}")
    return log.read_text()


def overrides(args) -> str:
    data = Path(args.data)
    settings = [
        f"task.train_data.input_path={data}/train-*",
        f"task.validation_data.input_path={data}/val-*",
        f"task.annotation_file={data}/instances_val.json",
    ]
    if args.steps:
        settings += [
            f"trainer.train_steps={args.steps}",
            f"trainer.optimizer_config.learning_rate.cosine.decay_steps={args.steps}",
        ]
    if args.smoke:
        settings += [
            "task.model.backbone.cream.model=cream_14",
            "task.train_data.global_batch_size=4",
            "task.validation_data.global_batch_size=4",
            "trainer.steps_per_loop=1",
            "trainer.summary_interval=1",
            "trainer.checkpoint_interval=2",
            "trainer.validation_interval=2",
            "trainer.validation_steps=1",
        ]
    return ",".join(settings)


def last_evaluation(folder: Path) -> dict[str, float]:
    """The scalars of the last evaluation step in a TensorBoard folder (Model Garden's `validation`)."""
    import tensorflow as tf

    found, step = {}, -1
    for file in sorted(folder.glob("events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(str(file)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if event.step >= step:
                    if event.step > step:
                        found, step = {}, event.step
                    found[value.tag] = (
                        float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") else value.simple_value
                    )
    return found


def multiply_adds(report: str) -> tuple[float, float]:
    """Millions of multiply-adds of the detector's convolutions and of its backbone's alone, from
    the profiler's float ops (two per multiply-add); NMS and box decoding are left out."""
    scale = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9}
    convolutions = {
        name: float(value) * scale[unit] / 2e6
        for name, value, unit in PROFILED.findall(report)
        if CONVOLUTION.search(name)
    }
    backbone = sum(v for name, v in convolutions.items() if not name.startswith(HEAD))
    return sum(convolutions.values()), backbone


def measure(backbone: str, args) -> dict:
    """Trains, evaluates and exports one detector (or reads what an earlier run left); its figures."""
    folder = Path(args.out) / backbone
    model_dir, export_dir, tflite = folder / "model", folder / "export", folder / "model.tflite"
    folder.mkdir(parents=True, exist_ok=True)
    common = [f"--experiment={BACKBONES[backbone]}", f"--params_override={overrides(args)}"]
    if not tflite.is_file():
        train = ["train", *common, "--mode=train_and_eval", f"--model_dir={model_dir}"]
        detection(folder / "train.log", *train)
        # The on-device export: preprocessed float input and TFLite's detection post-processing op
        # (Model Garden's batched NMS in TF ops runs as WHILE loops in TFLite, about 200x slower).
        mobile = [f"--experiment={BACKBONES[backbone]}", f"--params_override={overrides(args)},{TFLITE_NMS}"]
        detection(
            folder / "export.log",
            "export",
            *mobile,
            f"--checkpoint_path={model_dir}",
            f"--export_dir={export_dir}",
            f"--input_image_size={args.size},{args.size}",
            "--batch_size=1",
            "--input_type=tflite",
            "--log_model_flops_and_params",
        )
        detection(
            folder / "tflite.log",
            "tflite",
            *mobile,
            f"--saved_model_dir={export_dir / 'saved_model'}",
            f"--tflite_path={tflite}",
        )
    if args.speed_steps and not (folder / "speed.log").is_file():
        # Training speed alone on the machine (the backbones one after another), apart from the
        # training above, which may have shared the cores with other jobs.
        shutil.rmtree(folder / "speed", ignore_errors=True)
        loop = f"trainer.train_steps={args.speed_steps},trainer.steps_per_loop={args.speed_steps // 2}"
        speed = [f"--experiment={BACKBONES[backbone]}", f"--params_override={overrides(args)},{loop}"]
        detection(folder / "speed.log", "train", *speed, "--mode=train", f"--model_dir={folder / 'speed'}")
    log = folder / ("speed.log" if args.speed_steps else "train.log")
    rates = [float(r) for r in STEPS_PER_SECOND.findall(log.read_text())]
    metrics = last_evaluation(model_dir / "validation")
    return {
        "backbone": backbone,
        "AP": 100 * metrics["AP"],
        "AP50": 100 * metrics["AP50"],
        "AP75": 100 * metrics["AP75"],
        "steps_per_s": statistics.median(rates[1:] or rates),
        "mmacs": multiply_adds((export_dir / "model_flops.txt").read_text()),
        "tflite": tflite,
    }


def runner(path: Path, size: int):
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    (given,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(given["index"], [1, size, size, 3])
    interpreter.allocate_tensors()
    image = np.random.default_rng(0).normal(size=(1, size, size, 3)).astype(given["dtype"])  # preprocessed

    def run():
        interpreter.set_tensor(given["index"], image)
        interpreter.invoke()

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default=",".join(BACKBONES), help=f"among {', '.join(BACKBONES)}")
    parser.add_argument(
        "--data", default=str(REPO / "runs" / "detection" / "data"), help="the demo set (made if absent)"
    )
    parser.add_argument("--out", help="default runs/detection_benchmark; --smoke: a fresh temporary folder")
    parser.add_argument("--steps", type=int, default=0, help="training steps (0: the recipe's)")
    parser.add_argument("--size", type=int, default=128, help="the recipe's input size, for the exported files")
    parser.add_argument(
        "--speed_steps", type=int, default=0, help="time training alone over this many steps (the second half)"
    )
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per TFLite file and round")
    parser.add_argument("--smoke", action="store_true", help="a tiny set, the cream backbone, 2 steps, 2 x 2 calls")
    args = parser.parse_args()
    names = args.backbones.split(",")
    if bad := [n for n in names if n not in BACKBONES]:
        parser.error(f"unknown --backbones {bad}; valid are {', '.join(BACKBONES)}")
    if args.smoke:
        names, args.steps, args.rounds, args.repeats = ["cream"], 2, 2, 2
        if not args.out:
            args.out = tempfile.mkdtemp(prefix="detection_smoke_")
            atexit.register(shutil.rmtree, args.out, ignore_errors=True)
        args.data = os.path.join(args.out, "data")
    args.out = os.path.abspath(args.out or REPO / "runs" / "detection_benchmark")
    if not os.path.isfile(os.path.join(args.data, "instances_val.json")):
        from cream_tf.detection.demo_data import write_demo_set

        write_demo_set(args.data, {"train": 8, "val": 4} if args.smoke else None, image_size=128 if args.smoke else 256)
    runs = [measure(name, args) for name in names]
    times = alternate({r["backbone"]: runner(r["tflite"], args.size) for r in runs}, args.rounds, args.repeats)
    print(f"RetinaNet on the detection demo set ({args.size}x{args.size}); machine: {machine()}\n")
    header = ["backbone", "AP", "AP50", "AP75", "train steps/s", "detector MMACs", "backbone MMACs", "TFLite float ms"]
    rows = [
        [
            r["backbone"],
            f"{r['AP']:.2f}",
            f"{r['AP50']:.2f}",
            f"{r['AP75']:.2f}",
            f"{r['steps_per_s']:.2f}",
            f"{r['mmacs'][0]:.1f}",
            f"{r['mmacs'][1]:.1f}",
            f"{1e3 * statistics.median(times[r['backbone']]):.2f}",
        ]
        for r in runs
    ]
    print(table(header, rows))


if __name__ == "__main__":
    main()
