"""A search bounded in milliseconds against the default search bounded in FLOPs, at the same
measured latency.

1. The default search (configs/search/fashion_mnist.yaml: paths of 0-12 MFLOPs), run as a user
   runs it (`main.py --mode=search`, `train.deterministic=true`); its winner's whole network is
   timed in LiteRT (float32, XNNPACK, --threads) as cream_tf.latency times networks, the fastest
   of --times timings.
2. The same search bounded by predicted latency instead: `space.latency_ms=[0, L]` with L that
   winner's measured latency, the FLOPs bound lifted (the supernet's depths kept), the same seed
   and prior; the table is a copy of --table, or this host's measured first, under --out (the search
   measures what it lacks into it: blocks, and its space.latency_calibration networks).
3. Both winners side by side: MFLOPs, predicted and measured latency (timed alike), held-out and
   test top-1.

    .venv/bin/python benchmarks/latency_search.py           # two default searches (about 20 min)
    .venv/bin/python benchmarks/latency_search.py --table=benchmarks/data/latency/fashion_mnist/table_t1.json
    .venv/bin/python benchmarks/latency_search.py --smoke   # two tiny searches

Resumable: a search whose search_result.json exists under --out is read, not run again, and the
bound is read back (bound_ms.txt); both winners are timed again at the end, so a run resumed on a
quiet machine re-times them there. Prints Markdown tables and the machine it ran on.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import SMOKE_CANDIDATES, machine, table

REPO = Path(__file__).resolve().parent.parent
DEPTHS = "space.depths=[1,1,3,1,1]"  # what the default's flops_max=12 derives (flops.depths_for_flops_range)
# The smoke's searches skip the teacher (pick_method none traces no distillation step) and the
# export: the script times each winner itself.
SMOKE = (
    "data.image_size=16,data.validation_size=256,data.batch_size=32,space.depths=[1,1,1,1,1],space.stem_channels=8,"
    "space.flops_max=100,cream.pick_method=none,cream.board_size=2,cream.warmup_epochs=1,train.epochs=2,"
    "train.steps_per_epoch=3,selection.recalibrate_batches=2,selection.eval_batches=2,selection.export=false,"
    + SMOKE_CANDIDATES
)


def search(folder: Path, overrides: str) -> dict:
    """Runs (or reads) one search; returns its search_result.json."""
    result_file = folder / "search_result.json"
    if not result_file.is_file():
        command = [sys.executable, str(REPO / "main.py"), "--mode=search", f"--model_dir={folder}"]
        command.append(f"--params_override=train.deterministic=true,{overrides}")
        print(" ".join(command), file=sys.stderr, flush=True)
        start = time.monotonic()
        with open(f"{folder}.log", "w") as log:
            if subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode:
                raise SystemExit(f"the search in {folder} failed; its log: {folder}.log")
        (folder / "wall_s.txt").write_text(f"{time.monotonic() - start:.0f}")
    return json.loads(result_file.read_text())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(REPO / "runs" / "latency_search"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--table", default="", help="a latency table to start from (default: one measured under --out)")
    parser.add_argument("--times", type=int, default=3, help="timings per winner, the fastest kept")
    parser.add_argument("--smoke", action="store_true", help="two tiny searches")
    args = parser.parse_args()
    base = ""
    if args.smoke:
        args.out = tempfile.mkdtemp(prefix="latency-search-smoke-")
        atexit.register(shutil.rmtree, args.out, ignore_errors=True)
        base, args.times = SMOKE, 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from cream_tf import latency
    from cream_tf.arch import Arch

    flops_result = search(out / "flops", base)
    flops, limit = flops_result["winner"], flops_result["space"]["flops_range_mflops"][1]
    bound_file = out / "bound_ms.txt"  # kept: a resumed run reads the bound its latency search ran with
    if not bound_file.is_file():
        timed = latency.measure_network(Arch.parse(flops["arch"]), "float32", args.threads, args.times)
        bound_file.write_text(f"{timed['ms']:.4f}")
    bound = float(bound_file.read_text())
    table_file = out / "table.json"  # a --table is copied: the search adds its calibration networks to it
    if args.table and not table_file.is_file():
        shutil.copyfile(args.table, table_file)
    depths = "space.depths=[1,1,1,1,1]" if args.smoke else DEPTHS
    if args.smoke:  # the tiny space's table timed briefly here, so that the search finds it whole
        from cream_tf import config as config_lib
        from cream_tf.flops import build_space

        space = build_space(
            config_lib.load(config_lib.SearchConfig, str(REPO / "configs/search/fashion_mnist.yaml"), base)
        )
        tab = latency.LatencyTable.open(table_file, args.threads)
        latency.measure_missing(tab, latency.pieces_of_space(space), ["float32"], rounds=3, gap_seconds=0.01)
    bounded = f"space.latency_ms=[0,{bound}],space.latency_table={table_file}"
    bounded += f",space.latency_threads={args.threads}"
    bounded += ",space.latency_calibration=1" if args.smoke else ""  # the search measures it: one whole tiny net
    fast = search(out / "latency", ",".join(o for o in (base, depths, "space.flops_max=100000", bounded) if o))[
        "winner"
    ]
    ms = latency.LatencyTable.open(table_file, args.threads)
    rows = []
    for name, winner in ((f"FLOPs <= {limit:g} M", flops), (f"latency <= {bound} ms", fast)):
        arch = Arch.parse(winner["arch"])
        predicted = latency.predict_ms(arch, ms, "float32")
        measured = latency.measure_network(arch, "float32", args.threads, args.times)["ms"]
        figures = (f"{predicted:.4f}", f"{measured:.4f}", f"{winner['val_top1']:.2f}", f"{winner['test_top1']:.2f}")
        rows.append((name, arch.path, f"{winner['mflops']:.2f}", *figures))
    print(f"\nMachine: {machine(('tensorflow', 'ai-edge-litert'))}; LiteRT float32, {args.threads} thread(s)\n")
    header = ["search bounded by", "winner", "MFLOPs", "predicted ms", "measured ms", "held-out top-1 %"]
    print(table(header + ["test top-1 %"], rows))


if __name__ == "__main__":
    main()
