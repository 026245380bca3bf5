"""The search in each space preset: the default search's setting (configs/search/fashion_mnist.yaml)
with the candidate set of configs/spaces/<preset>.yaml over it, each run as a user runs it
(`main.py --mode=search`, its own process, `train.deterministic=true`). The presets' prior is
uniform, the paper space's the official one; `paper_uniform` runs the paper's space with the
uniform prior, to tell what the prior alone changes.

Per run: wall time and the process's CPU seconds and peak memory; trace time (the log's "the first
step took" line: building the train step's graph and its first step); the winner, its MFLOPs and
its held-out and test top-1 (search_result.json). `--before=COMMIT` runs the paper's space once
more with the code of that commit (a git worktree): the same winner and time are what a change
that only adds spaces must keep. Then the winners' int8 files (as --mode=export writes them): which
ops they hold (the npu space's must be integer-only, with no LOGISTIC) and their batch-1 latency
in LiteRT with XNNPACK at one thread, the files timed in alternation (_common.alternate).

    .venv/bin/python benchmarks/spaces.py --before=feed5e5          # 5 searches, about 30 min on 2 cores
    .venv/bin/python benchmarks/spaces.py --runs=npu,paper          # some of them
    .venv/bin/python benchmarks/spaces.py --smoke                   # one tiny npu search

Resumable: a run whose search_result.json exists under --out is read, not run again. Prints
Markdown tables and the machine it ran on.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import alternate, machine, table

REPO = Path(__file__).resolve().parent.parent
# Run name -> (the space preset file over the default search config, or None; more overrides).
RUNS = {
    "paper": (None, ""),
    "extended": ("extended", ""),
    "depth": ("depth", ""),
    "npu": ("npu", ""),
    # The paper's space with the presets' uniform prior: what the prior alone changes.
    "paper_uniform": (None, "cream.prior=[]"),
}
SMOKE = (
    "data.image_size=16,data.validation_size=256,data.batch_size=32,space.depths=[1,1,1,1,1],space.stem_channels=8,"
    "space.flops_max=100,cream.pick_method=top1,cream.board_size=2,cream.warmup_epochs=1,train.epochs=2,train.steps_per_epoch=3,"
    "selection.recalibrate_batches=2,selection.eval_batches=2,selection.export_paths=winner"
)
FIRST_STEP = re.compile(r"the first step took ([\d.]+) s")
BUILDING = "Building the train step's graph"  # logged once per trace (cream_tf.callbacks)


def search(name: str, args) -> dict:
    """Runs (or reads) one search; returns its figures."""
    folder = Path(args.out) / name
    result_file, figures_file = folder / "search_result.json", folder / "benchmark.json"
    log = folder.parent / f"{name}.log"
    if figures_file.is_file():
        figures = json.loads(figures_file.read_text())
        return figures | {"traces": log.read_text().count(BUILDING)}
    tree = Path(args.tree) if name == "before" else REPO
    configs = [tree / "configs" / "search" / "fashion_mnist.yaml"]
    preset, more = RUNS.get(name, (None, ""))
    if preset:
        configs.append(REPO / "configs" / "spaces" / f"{preset}.yaml")
    overrides = ",".join(o for o in ("train.deterministic=true", more, SMOKE if args.smoke else "") if o)
    command = [sys.executable, str(tree / "main.py"), "--mode=search", f"--model_dir={folder}"]
    command += ["--config_file=" + ",".join(map(str, configs)), f"--params_override={overrides}"]
    print(f"search {name}: {' '.join(command)}", file=sys.stderr, flush=True)
    start = time.monotonic()
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=tree, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"search {name} failed; its log: {log}\n{log.read_text()[-3000:]}")
    text = log.read_text()
    first = FIRST_STEP.findall(text)
    winner = json.loads(result_file.read_text())["winner"]
    figures = {
        "name": name,
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_gb": usage.ru_maxrss / 2**20,
        "first_step_s": float(first[0]) if first else float("nan"),
        "traces": text.count(BUILDING),
        "arch": winner["arch"],
        "mflops": winner["mflops"],
        "val_top1": winner["val_top1"],
        "test_top1": winner["test_top1"],
        "int8": int8_file(folder / winner["entry"], folder / "winner_int8.tflite"),
    }
    figures_file.write_text(json.dumps(figures, indent=1))
    return figures


def int8_file(entry: Path, path: Path) -> str:
    """The entry's int8 file as `main.py --mode=export` writes it (a search exports float files
    only): full-integer post-training quantization calibrated on export.calibration_images
    training images of the entry's data."""
    from cream_tf import atomic, data, export
    from cream_tf.config import DataConfig, ExportConfig, from_dict

    settings = json.loads((entry / "metadata.json").read_text())["data"]
    images = data.sample_images(from_dict(DataConfig, settings, "data"), "train", ExportConfig().calibration_images)
    atomic.write_bytes(path, export.to_tflite_int8(entry / "saved_model", images))
    return str(path)


def int8_rows(runs: list[dict], args) -> list[tuple]:
    """Per winner's int8 file: op counts, float tensors, and its latency (median over rounds)."""
    from ai_edge_litert.interpreter import Interpreter
    from int8_latency import runner

    rows, sides = [], {}
    for run in runs:
        interpreter = Interpreter(model_path=run["int8"])
        ops = [op["op_name"] for op in interpreter._get_ops_details()]
        floats = sum(t["dtype"].__name__.startswith("float") for t in interpreter.get_tensor_details())
        rows.append([run["name"], run["mflops"], len(ops), ops.count("LOGISTIC"), ops.count("HARD_SWISH"), floats])
        sides[run["name"]] = runner(Path(run["int8"]), threads=1)
    times = alternate(sides, args.rounds, args.repeats)
    for row in rows:
        row.append(f"{1e3 * statistics.median(times[row[0]]):.3f}")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="paper,extended,depth,npu", help=f"among {', '.join(RUNS)}")
    parser.add_argument("--before", help="a commit: the paper's space once more with its code (a git worktree)")
    parser.add_argument("--out", help="default runs/spaces; --smoke: a fresh temporary folder")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per int8 file and round")
    parser.add_argument("--smoke", action="store_true", help="one tiny npu search, 2 rounds x 5 calls")
    args = parser.parse_args()
    names = args.runs.split(",")
    if bad := [n for n in names if n not in RUNS]:
        parser.error(f"unknown --runs {bad}; valid are {', '.join(RUNS)}")
    if args.smoke:
        names, args.before, args.rounds, args.repeats = ["npu"], None, 2, 5
        args.out = tempfile.mkdtemp(prefix="spaces_smoke_")
        atexit.register(shutil.rmtree, args.out, ignore_errors=True)
    args.out = os.path.abspath(args.out or REPO / "runs" / "spaces")
    os.makedirs(args.out, exist_ok=True)
    if args.before:
        args.tree = tempfile.mkdtemp(prefix="spaces_before_")
        subprocess.run(["git", "worktree", "add", "--detach", args.tree, args.before], cwd=REPO, check=True)
        atexit.register(subprocess.run, ["git", "worktree", "remove", "--force", args.tree], cwd=REPO)
        names = ["before", *names]
    runs = [search(name, args) for name in names]
    print(f"Searches per space preset (train.deterministic=true); machine: {machine()}\n")
    rows = [
        [
            r["name"],
            f"{r['wall_s']:.0f}",
            f"{r['cpu_s']:.0f}",
            f"{r['first_step_s']:.1f}",
            r["traces"],
            f"{r['peak_gb']:.2f}",
        ]
        + [f"`{r['arch'].split(';')[0]}`", f"{r['mflops']:.2f}", f"{r['val_top1']:.2f}", f"{r['test_top1']:.2f}"]
        for r in runs
    ]
    header = ["space", "wall s", "CPU s", "trace + first step s", "traces", "peak RSS GB", "winner", "MFLOPs"]
    print(table(header + ["held-out top-1 %", "test top-1 %"], rows))
    print(
        "\nThe winners' int8 files (post-training, as --mode=export writes them), batch 1, LiteRT with XNNPACK, "
        "1 thread:\n"
    )
    header = ["space", "MFLOPs", "ops", "LOGISTIC", "HARD_SWISH", "float tensors", "latency ms"]
    print(table(header, int8_rows([r for r in runs if r["name"] != "before"], args)))


if __name__ == "__main__":
    main()
