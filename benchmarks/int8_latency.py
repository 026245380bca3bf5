"""Batch-1 latency of an entry's two int8 TFLite files, post-training (PTQ) and QAT, with its
recorded top-1 of every format and how often each int8 file predicts the float model's class.

`--mode=qat` writes both files into its entry (`model_int8_ptq.tflite`, `model_int8.tflite`),
calibrated on the same images. They should run equally fast: the same ops on int8 tensors, as
XNNPACK runs them. The two files alternate call by call (cream_tf's `alternate`), so a change of
machine load hits both alike; figures are medians over `--rounds` rounds. The agreement count
(test images on which a file's argmax is `model.keras`'s) is a closer measure of what quantization
changed than a difference of top-1, which nets out images gained and lost; the table also counts
those two, the paired standard error of the top-1 difference and McNemar's exact p, which say
whether a gap to float is larger than the test set resolves.

    .venv/bin/python benchmarks/int8_latency.py --entry runs/retrain/entry_qat --threads 1,2 --rounds 9
    .venv/bin/python benchmarks/int8_latency.py --smoke    # a tiny net's PTQ file on both sides

Prints Markdown tables and the machine it ran on.
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import statistics
import tempfile
from pathlib import Path

from _common import alternate, machine, speedup, table

FILES = {"int8 PTQ": "model_int8_ptq.tflite", "int8 QAT": "model_int8.tflite"}  # cream_tf.folders' names


def smoke_entry(folder: Path) -> Path:
    """A tiny net's PTQ file written under both names: the timing machinery, not QAT, is tried."""
    from cream_tf import data, export
    from cream_tf.arch import Arch
    from cream_tf.childnet import build_child
    from cream_tf.config import DataConfig

    model = build_child(Arch.parse("[0][0][0][0][0]@28;in=1;classes=10;stem=8/1"))
    model.save(folder / "model.keras")
    model.export(str(folder / "saved_model"), format="tf_saved_model", verbose=False)
    calibration = data.sample_images(DataConfig(), "train", 8)
    int8 = export.to_tflite_int8(folder / "saved_model", calibration)
    for file in FILES.values():
        (folder / file).write_bytes(int8)
    return folder


def agreement(entry: Path, max_batches: int) -> list[tuple]:
    """Per file, on the test split of the entry's data (metadata.json; Fashion-MNIST when it has
    none): (file, images, top-1 %, images where it predicts the float model's class, images the
    float model gets right and it wrong, the reverse, the paired standard error of its top-1 minus
    float's, McNemar's exact p of that difference), from cream_tf.evaluate.compare."""
    from cream_tf import data, evaluate
    from cream_tf.config import DataConfig, from_dict

    metadata_file = entry / "metadata.json"
    settings = json.loads(metadata_file.read_text()).get("data") if metadata_file.is_file() else None
    config = from_dict(DataConfig, settings, "data") if settings else DataConfig()
    reference = "float (model.keras)"
    predictors = {reference: evaluate.predictor(entry / "model.keras")}
    predictors.update({name: evaluate.predictor(entry / file) for name, file in FILES.items()})
    figures = evaluate.compare(predictors, data.load(config, "test", training=False), max_batches, reference)
    rows = []
    for name, f in figures.items():
        c = f["changes"]
        columns = (c["same_class"], c["lost"], c["won"], f"{c['paired_standard_error']:.3f}", f"{c['mcnemar_p']:.3f}")
        rows.append((name, f["images"], f"{f['top1']:.2f}", *columns))
    return rows


def runner(path: Path, threads: int):
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    (given,), (wanted,) = interpreter.get_input_details(), interpreter.get_output_details()
    image = np.random.default_rng(0).integers(-128, 128, size=given["shape"]).astype(given["dtype"])

    def run():
        interpreter.set_tensor(given["index"], image)
        interpreter.invoke()
        return interpreter.get_tensor(wanted["index"])

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entry", type=Path, help="an entry folder --mode=qat wrote")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per file and round")
    parser.add_argument("--batches", type=int, default=0, help="test batches for the agreement count; 0 = all")
    parser.add_argument("--smoke", action="store_true", help="a tiny net, 1 thread, 2 rounds x 5 calls, 1 batch")
    args = parser.parse_args()
    if args.smoke:
        folder = tempfile.mkdtemp(prefix="int8-latency-smoke-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        args.entry, args.threads, args.rounds, args.repeats = smoke_entry(Path(folder)), "1", 2, 5
        args.batches = 1
    if args.entry is None:
        parser.error("--entry=FOLDER (written by --mode=qat) or --smoke is required")
    missing = [file for file in ("model.keras", *FILES.values()) if not (args.entry / file).is_file()]
    if missing:
        parser.error(f"{args.entry} lacks {', '.join(missing)}; valid is an entry folder --mode=qat wrote")

    print(f"Machine: {machine(('ai-edge-litert',))}\n")
    metadata_file = args.entry / "metadata.json"
    if metadata_file.is_file():
        accuracy = json.loads(metadata_file.read_text())["accuracy"]
        print(f"Top-1 and top-5 on {accuracy['images']} images of {accuracy['split']} (metadata.json):\n")
        print(
            table(["format", "top-1 %", "top-5 %"], [(k, v, accuracy["top5"][k]) for k, v in accuracy["top1"].items()])
        )
        print()
    rows = agreement(args.entry, args.batches)
    print(f"Test images on which each file predicts the float model's class ({rows[0][1]} images):\n")
    columns = ["file", "images", "top-1 %", "same class as float", "float right, it wrong", "float wrong, it right"]
    print(table(columns + ["paired SE of top-1 - float's (points)", "McNemar p"], rows))
    print()
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        sides = {name: runner(args.entry / file, threads) for name, file in FILES.items()}
        for run in sides.values():  # warm-up
            for _ in range(3):
                run()
        times = alternate(sides, args.rounds, args.repeats)
        median = {name: statistics.median(seconds) * 1e3 for name, seconds in times.items()}
        ratio = speedup(times, "int8 QAT", "int8 PTQ")
        rows.append((threads, f"{median['int8 PTQ']:.3f}", f"{median['int8 QAT']:.3f}", f"{ratio:.2f}x"))
    print(f"Batch-1 latency, ms (median of {args.rounds} rounds x {args.repeats} calls):\n")
    print(table(["threads", "int8 PTQ", "int8 QAT", "QAT speed / PTQ"], rows))


if __name__ == "__main__":
    main()
