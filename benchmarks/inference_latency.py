"""Batch-1 inference latency of cream_287 at 224x224: Keras, TFLite float32 and int8, ONNX Runtime.

One network, one set of weights (timm's build with random BatchNorm statistics, copied into
ours), four runtimes:
- Keras: model(x, training=False) in a tf.function;
- TFLite float32 and int8, as cream_tf.export writes them (int8: full-integer post-training
  quantization, calibrated here on a few random images, which sets ranges but not speed), run by
  ai_edge_litert's Interpreter with its default XNNPACK delegate and num_threads;
- ONNX Runtime (CPU provider, default graph optimizations) on timm's PyTorch build exported
  with torch.onnx.export (TorchScript exporter, opset 17).
Each thread count runs in its own process pinned to that many cores (TensorFlow's thread pools
can be sized only once per process); there the four runtimes alternate, `--repeats` calls each
per round, and the figures are medians over `--rounds` rounds. Each call sets the input, runs,
and reads the output. Targets: TFLite float32 no slower than ONNX Runtime at 1 and 2 threads;
int8 at least 1.6x faster than float32 at 1 thread. The last table sets the achieved
multiply-adds/s (cream_tf.flops) against the CPU's peak (hardware_peak.py).

    .venv/bin/python benchmarks/inference_latency.py             # 1 and 2 threads
    .venv/bin/python benchmarks/inference_latency.py --smoke     # seconds; proves the script works
    .venv/bin/python benchmarks/inference_latency.py --threads 1,2,4 --rounds 9

Prints Markdown tables and the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]

from _common import alternate, machine, speedup, table, use_cores
from hardware_peak import cpu_peak

RUNTIMES = {
    "keras": "Keras (tf.function)",
    "tflite_float32": "TFLite float32 (XNNPACK)",
    "tflite_int8": "TFLite int8 (XNNPACK)",
    "onnxruntime": "ONNX Runtime float32 (timm export)",
}
PACKAGES = ("tensorflow", "keras", "ai-edge-litert", "onnxruntime", "torch", "timm")


def prepare(folder: Path, input_size: int, calibration_images: int) -> int:
    """Writes model.keras, the two .tflite files and model.onnx of one cream_287; returns its MACs."""
    sys.path.insert(0, str(REPO / "tests"))
    # torch (and timm's torchvision) before TensorFlow: the other order segfaults (tests/conftest.py).
    import numpy as np
    import torch
    from torch_reference import numpy_state_dict, randomize_bn, timm_cream

    from cream_tf import export, zoo
    from cream_tf.childnet import build_child
    from cream_tf.convert import load_state_dict
    from cream_tf.flops import flops_of

    arch = zoo.arch_of("cream_287", input_size=input_size, dropout=0.0)
    reference = randomize_bn(timm_cream(arch.choices))
    model = build_child(arch, name="cream_287")
    load_state_dict(model, numpy_state_dict(reference))
    model.save(folder / "model.keras")
    model.export(str(folder / "saved_model"), format="tf_saved_model", verbose=False)
    (folder / "float32.tflite").write_bytes(export.to_tflite_float(folder / "saved_model"))
    calibration = np.random.default_rng(1).normal(size=(calibration_images, input_size, input_size, 3))
    (folder / "int8.tflite").write_bytes(export.to_tflite_int8(folder / "saved_model", calibration.astype("float32")))
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated; the dynamo one needs onnxscript
        warnings.simplefilter("ignore")
        torch.onnx.export(
            reference,
            (torch.zeros(1, 3, input_size, input_size),),
            str(folder / "model.onnx"),
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["logits"],
        )
    return flops_of(arch)


def worker(folder: Path, threads: int, rounds: int, repeats: int) -> dict:
    """Times the four runtimes with `threads` threads in this process; returns seconds per call."""
    use_cores(threads)
    import keras
    import numpy as np
    import onnxruntime
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    model = keras.models.load_model(folder / "model.keras")
    image = np.random.default_rng(0).normal(size=(1, *model.input_shape[1:])).astype("float32")

    keras_predict = tf.function(lambda x: model(x, training=False))

    def tflite(path):
        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        interpreter.allocate_tensors()
        (given,), (wanted,) = interpreter.get_input_details(), interpreter.get_output_details()
        x = image
        if given["dtype"] == np.int8:
            scale, zero_point = given["quantization"]
            x = np.clip(np.round(image / scale) + zero_point, -128, 127).astype(np.int8)

        def run():
            interpreter.set_tensor(given["index"], x)
            interpreter.invoke()
            return interpreter.get_tensor(wanted["index"])

        return run

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
    nchw = np.ascontiguousarray(image.transpose(0, 3, 1, 2))
    sides = {
        "keras": lambda: keras_predict(image).numpy(),
        "tflite_float32": tflite(folder / "float32.tflite"),
        "tflite_int8": tflite(folder / "int8.tflite"),
        "onnxruntime": lambda: session.run(None, {"image": nchw})[0],
    }
    outputs = {name: run() for name, run in sides.items()}  # also traces and warms up
    for run in sides.values():
        for _ in range(2):
            run()
    differences = {
        name: float(np.max(np.abs(outputs[name] - outputs["onnxruntime"]))) for name in ("keras", "tflite_float32")
    }
    return {"times": alternate(sides, rounds, repeats), "max_logit_difference": differences}


def run_worker(folder: Path, threads: int, rounds: int, repeats: int) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        str(folder),
        "--threads",
        str(threads),
        "--rounds",
        str(rounds),
        "--repeats",
        str(repeats),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"The {threads}-thread worker failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(results: dict[int, dict], macs: int, input_size: int, rounds: int, repeats: int) -> None:
    print(
        f"\nBatch-1 inference latency of cream_287 at {input_size}x{input_size} ({macs / 1e6:.1f} M multiply-adds); "
        f"median of {rounds} rounds x {repeats} calls, runtimes alternating"
    )
    print(f"Machine: {machine(PACKAGES)}")
    for threads, result in results.items():
        diffs = result["max_logit_difference"]
        print(
            f"Same outputs, {threads} thread(s): max |logit difference| to ONNX Runtime: "
            + ", ".join(f"{RUNTIMES[name]} {value:.1e}" for name, value in diffs.items())
        )
    print()
    rows = []
    for threads, result in results.items():
        times = result["times"]
        for name, label in RUNTIMES.items():
            rows.append(
                (
                    threads,
                    label,
                    f"{1000 * statistics.median(times[name]):.2f}",
                    f"{speedup(times, name, 'onnxruntime'):.2f}x",
                )
            )
    print(table(("threads", "runtime", "latency (ms)", "speed vs ONNX Runtime"), rows) + "\n")
    rows = []
    for threads, result in results.items():
        times = result["times"]
        rows.append(
            (
                "TFLite float32 vs ONNX Runtime",
                threads,
                f"{speedup(times, 'tflite_float32', 'onnxruntime'):.2f}x",
                ">= 1.00x",
            )
        )
        rows.append(
            (
                "TFLite int8 vs TFLite float32",
                threads,
                f"{speedup(times, 'tflite_int8', 'tflite_float32'):.2f}x",
                ">= 1.6x" if threads == 1 else "",
            )
        )
    print(table(("comparison", "threads", "speed-up", "target"), rows) + "\n")
    peak = cpu_peak()
    print(peak.derivation() + "\n")
    rows = []
    for threads, result in results.items():
        for name, peak_of in (("tflite_float32", peak.float32), ("tflite_int8", peak.int8)):
            achieved = macs / statistics.median(result["times"][name])
            rows.append(
                (
                    threads,
                    RUNTIMES[name],
                    f"{achieved / 1e9:.1f}",
                    f"{peak_of(threads) / 1e9:.1f}",
                    f"{100 * achieved / peak_of(threads):.1f}%",
                )
            )
    print(
        table(("threads", "runtime", "achieved (G multiply-adds/s)", "peak (G multiply-adds/s)", "share of peak"), rows)
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="", help="comma-separated thread counts (default 1,2; 1 with --smoke)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per runtime and round")
    parser.add_argument("--input_size", type=int, default=224)
    parser.add_argument("--calibration_images", type=int, default=16)
    parser.add_argument("--smoke", action="store_true", help="64x64 input, 1 thread, 2 rounds x 2 calls")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)  # internal: the folder to time
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(Path(args.worker), int(args.threads), args.rounds, args.repeats)))
        return
    if args.smoke:
        args.input_size, args.calibration_images, args.rounds, args.repeats = 64, 2, 2, 2
        args.threads = args.threads or "1"
    thread_counts = [int(n) for n in (args.threads or "1,2").split(",")]
    with tempfile.TemporaryDirectory(prefix="cream_latency_") as folder:
        macs = prepare(Path(folder), args.input_size, args.calibration_images)
        results = {n: run_worker(Path(folder), n, args.rounds, args.repeats) for n in thread_counts}
    report(results, macs, args.input_size, args.rounds, args.repeats)


if __name__ == "__main__":
    main()
