"""Does the latency table predict whole networks, and how well do FLOPs order them?

For each space (the default search's, configs/search/fashion_mnist.yaml at 28x28, and the ImageNet
search's, configs/search/imagenet.yaml at 224x224) it draws --nets paths as the search draws them
(uniform prior, the space's FLOPs range, seed --seed), measures the space's latency table on this
host (cream_tf.latency: every block shape alone and --calibration whole calibration networks, drawn
with the table's own seed, float32 and int8, LiteRT with XNNPACK at --threads), then converts and
times each drawn network the same way. Per space and precision:

- the predictor (the table's sum times its calibration scale), on networks that did not
  calibrate it: mean absolute error in %, the share within +-10%, the largest error, its mean
  signed error; and beside it the sum alone (the scale left out);
- Spearman's rank correlation with the measured latency, of the prediction and of the FLOPs;
- the pairs each orders wrongly by more than 10% in time: the one ranked faster is measured more
  than 10% slower.

    .venv/bin/python benchmarks/latency.py                  # 2 spaces x 50 nets (about 30 min)
    .venv/bin/python benchmarks/latency.py --spaces=fashion_mnist --nets=20
    .venv/bin/python benchmarks/latency.py --report         # tables from what is under --out
    .venv/bin/python benchmarks/latency.py --convert_only   # only the files, to time them later
    .venv/bin/python benchmarks/latency.py --smoke          # a tiny space, 3 nets, float32

Every file is timed as cream_tf.latency times it (the fastest of 15 rounds spread over 1.5 s), in
--passes passes over all of them (table and networks alike, each pass keeping a file's fastest
figure): on a shared VM the machine's speed drifts by tens of percent over minutes, and a later
pass gives each file another chance at its own pace. Resumable: the tables, the networks' files
and their figures go to --out as they are made. Run nothing else meanwhile. Prints Markdown
tables and the machine it ran on.
"""

from __future__ import annotations

import argparse
import atexit
import itertools
import json
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
from _common import machine, table
from search_quality import spearman_rho

REPO = Path(__file__).resolve().parent.parent
SPACES = {"fashion_mnist": "configs/search/fashion_mnist.yaml", "imagenet": "configs/search/imagenet.yaml"}
SMOKE = "data.image_size=16,space.depths=[1,1,1,1,1],space.stem_channels=8,space.flops_max=100"
SMOKE_CANDIDATES = ",space.candidates=[{kind: mbconv, kernel: 3, expansion: 4}, {kind: mbconv, kernel: 5}]"


def space_of(name: str, smoke: bool):
    from cream_tf import config as config_lib
    from cream_tf.flops import build_space

    config = config_lib.load(
        config_lib.SearchConfig, str(REPO / SPACES[name]), SMOKE + SMOKE_CANDIDATES if smoke else ""
    )
    return build_space(config), (config.space.flops_min, config.space.flops_max)


def study(name: str, args) -> list[dict]:
    """Measures (or reads) one space's table, with its calibration networks, and its benchmark
    networks, in `--passes` passes over all of them (each keeps every file's fastest figure);
    returns one record per benchmark network, its prediction from the final table."""
    from cream_tf import atomic, latency
    from cream_tf.arch import Arch
    from cream_tf.flops import flops_of

    space, flops_range = space_of(name, args.smoke)
    folder = Path(args.out) / name
    files = folder / "files"
    tab = latency.LatencyTable.open(folder / f"table_t{args.threads}.json", args.threads)
    records_file = folder / f"networks_t{args.threads}.json"
    records = json.loads(records_file.read_text()) if records_file.is_file() else []
    wanted = latency.pieces_of_space(space) | latency.drawn_archs(space, flops_range, args.calibration)
    drawn = latency.drawn_archs(space, flops_range, args.nets + args.calibration, seed=args.seed)
    archs = [arch for key, arch in drawn.items() if key not in wanted][: args.nets]  # never a calibration network
    for index, arch in enumerate(archs):
        if index == len(records):
            records.append({"arch": str(arch), "mflops": flops_of(arch) / 1e6})
        assert records[index]["arch"] == str(arch), f"{records_file} was drawn otherwise; move it away"
    if args.convert_only:  # every file made now, to be timed by a later run
        atomic.write_json(records_file, records)
        for precision in args.precisions:
            for piece in [*wanted.values(), *archs]:
                latency.converted(piece, precision, files)
            print(f"{name}: {len(wanted)} pieces and {len(archs)} networks converted ({precision})", flush=True)
        return []
    timing = {"rounds": args.rounds}
    for number in range(1, args.passes + 1):
        latency.measure_missing(tab, wanted, args.precisions, passes=number, keep=files, **timing)
        for index, (arch, record) in enumerate(zip(archs, records)):
            for precision in args.precisions:
                before = record.get(precision)
                if before and before["passes"] >= number:
                    continue
                stats = latency.time_tflite(latency.converted(arch, precision, files), args.threads, **timing)
                if before and before["ms"] < stats["ms"]:
                    stats = before
                record[precision] = {**stats, "passes": number}
            atomic.write_json(records_file, records)
            figures = ", ".join(f"{p} {record[p]['ms']:.3f} ms" for p in args.precisions)
            where = f"{name} pass {number}, {index + 1}/{len(archs)}"
            print(f"{where}: {arch.path} {record['mflops']:.1f} MFLOPs; {figures}", flush=True)
    for record in records[: len(archs)]:
        arch = Arch.parse(record["arch"])
        for precision in args.precisions:
            record[precision]["predicted_ms"] = latency.predict_ms(arch, tab, precision)
            record[precision]["scale"] = tab.scale(precision, arch.input_size)
    return records[: len(archs)]


def misordered(score, measured) -> int:
    """Pairs where `score` ranks one network below the other, which is measured > 10% slower."""
    return sum(
        1
        for i, j in itertools.combinations(range(len(score)), 2)
        for lo, hi in ((i, j), (j, i))
        if score[lo] < score[hi] and measured[lo] > 1.1 * measured[hi]
    )


def summary(name: str, records: list[dict], precision: str) -> tuple:
    measured = np.array([r[precision]["ms"] for r in records])
    predicted = np.array([r[precision]["predicted_ms"] for r in records])
    scale = records[0][precision]["scale"]
    mflops = np.array([r["mflops"] for r in records])
    error = (predicted - measured) / measured * 100
    summed = (predicted / scale - measured) / measured * 100
    pairs = len(records) * (len(records) - 1) // 2
    return (
        name,
        precision,
        len(records),
        f"{measured.min():.3f}-{measured.max():.3f}",
        f"{scale:.4f}",
        f"{np.abs(error).mean():.2f}",
        f"{(np.abs(error) <= 10).mean() * 100:.0f}",
        f"{np.abs(error).max():.1f}",
        f"{error.mean():+.2f}",
        f"{np.abs(summed).mean():.2f} / {(np.abs(summed) <= 10).mean() * 100:.0f} / {summed.mean():+.2f}",
        f"{spearman_rho(predicted, measured):.3f}",
        f"{spearman_rho(mflops, measured):.3f}",
        f"{misordered(predicted, measured)} / {misordered(mflops, measured)} of {pairs}",
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spaces", default=",".join(SPACES))
    parser.add_argument("--nets", type=int, default=50)
    parser.add_argument("--precisions", default="float32,int8")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--calibration", type=int, default=10, help="calibration networks in each table")
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds per file (cream_tf.latency.time_tflite)")
    parser.add_argument("--passes", type=int, default=2, help="passes over every file, each keeping its fastest figure")
    parser.add_argument("--out", default=str(REPO / "runs" / "latency"))
    parser.add_argument("--report", action="store_true", help="only the tables, from what is under --out")
    parser.add_argument(
        "--convert_only", action="store_true", help="only convert every file under --out (a later run times them)"
    )
    parser.add_argument("--smoke", action="store_true", help="a tiny two-candidate space, 3 nets, float32")
    args = parser.parse_args()
    from absl import logging

    logging.set_verbosity(logging.INFO)  # the table's progress lines (cream_tf.latency)
    args.precisions = args.precisions.split(",")
    from cream_tf.latency import CALIBRATION_SEED

    if args.seed == CALIBRATION_SEED:
        parser.error(f"--seed={args.seed} draws the calibration networks; the benchmark predicts others")
    if args.report:
        args.passes = 0  # read what is under --out, time nothing
    names = args.spaces.split(",")
    unknown = [n for n in names if n not in SPACES]
    if unknown:
        parser.error(f"unknown space(s) {unknown}; valid are {', '.join(SPACES)}")
    if args.smoke:
        args.out = tempfile.mkdtemp(prefix="latency-smoke-")
        atexit.register(shutil.rmtree, args.out, ignore_errors=True)
        names, args.nets, args.precisions, args.rounds, args.passes = ["fashion_mnist"], 3, ["float32"], 3, 1
        args.calibration = 2
    if args.convert_only:
        for name in names:
            study(name, args)
        return
    rows = []
    for name in names:
        records = study(name, args)
        rows += [summary(name, records, precision) for precision in args.precisions]
    print(f"\nMachine: {machine(('tensorflow', 'ai-edge-litert'))}; {args.threads} thread(s)\n")
    header = ["space", "precision", "nets", "measured ms", "scale", "MAE %", "within 10 %", "max error %", "bias %"]
    header += ["sum alone: MAE % / within 10 % / bias %"]
    header += ["Spearman predicted", "Spearman FLOPs", "pairs misordered >10%: predicted / FLOPs"]
    print(table(header, rows))


if __name__ == "__main__":
    main()
