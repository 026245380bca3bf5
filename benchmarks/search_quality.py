"""Does the search pick good architectures? Cream (meta), Cream with the best board path as the
teacher (top1) and plain single-path one-shot training (none, SPOS), on the same data, budget and
seeds.

For every method and seed a supernet is trained (the default search's config unless given).
One fixed set of paths, drawn once with a fixed seed to span the space's FLOPs range, is then
scored with the weights each supernet gives it (BatchNorm recalibrated, held-out split); every
one of those paths, every method's winner and random paths at the winners' FLOPs (+-5%) is also
trained alone with a short schedule and measured on the test split. Reported per method: Kendall
tau and Spearman rho between inherited and stand-alone accuracy (all paths, and within a narrow
FLOPs window), the winner's stand-alone accuracy against the random paths at its FLOPs, the
supernet's training time; the spread over seeds; and the stand-alone noise from repeats.

    .venv/bin/python benchmarks/search_quality.py                  # the study (hours on 2 cores)
    .venv/bin/python benchmarks/search_quality.py --smoke          # tiny everything, minutes
    .venv/bin/python benchmarks/search_quality.py --config_file=VARIANT.yaml --out=runs/variant \
        --reference=runs/search_quality/study.json --rank_only --methods=meta --seeds=1   # a variant's tau

Resumable: every trained model's figures go to --out/study.json as soon as they exist, and a
supernet in training resumes from its own checkpoint, so a stopped study continues where it was.
"""

from __future__ import annotations

import argparse
import atexit
import itertools
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from _common import SMOKE_CANDIDATES, machine

from cream_tf import atomic, data
from cream_tf import config as config_lib
from cream_tf.arch import SearchSpace
from cream_tf.flops import FlopsTable, build_space
from cream_tf.retrain import RetrainRun
from cream_tf.search.run import SearchRun
from cream_tf.search.selection import PathEvaluator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("meta", "top1", "none")
SMOKE_SEARCH = (
    "data.image_size=16,data.validation_size=256,data.batch_size=32,space.depths=[1,1,1,1,1],space.stem_channels=8,"
    "cream.board_size=3,cream.warmup_epochs=1,cream.meta_update_every=2,train.epochs=2,train.steps_per_epoch=4,"
    f"selection.recalibrate_batches=2,selection.eval_batches=2,{SMOKE_CANDIDATES}"
)


# --- rank correlation ----------------------------------------------------------------------------


def kendall_tau(x, y) -> float:
    """Kendall's tau-b: (concordant - discordant) / sqrt((n0 - ties in x) (n0 - ties in y))."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    concordant = discordant = ties_x = ties_y = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        ties_x += dx == 0
        ties_y += dy == 0
        concordant += dx * dy > 0
        discordant += dx * dy < 0
    pairs = len(x) * (len(x) - 1) // 2
    denominator = np.sqrt((pairs - ties_x) * (pairs - ties_y))
    return float((concordant - discordant) / denominator) if denominator else float("nan")


def ranks(values) -> np.ndarray:
    """1-based ranks, ties sharing the mean of their ranks."""
    values = np.asarray(values, float)
    order = np.argsort(values, kind="stable")
    result = np.empty(len(values))
    result[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        tied = values == value
        result[tied] = result[tied].mean()
    return result


def spearman_rho(x, y) -> float:
    """Pearson correlation of the ranks."""
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


# --- the study -----------------------------------------------------------------------------------


def uniform_paths(space: SearchSpace, rng: np.random.Generator, draws: int) -> Iterator[tuple[int, ...] | None]:
    """`draws` paths drawn uniformly over the space's candidates at each position; None for a draw
    that a position does not allow (a skip at a stage's first block)."""
    allowed, candidates = space.allowed(), len(space.template.ops.ops)
    for _ in range(draws):
        path = tuple(int(c) for c in rng.integers(0, candidates, len(space.positions)))
        yield path if all(c in a for c, a in zip(path, allowed)) else None


def fixed_paths(space: SearchSpace, config: config_lib.SearchConfig, count: int, seed: int) -> list[list[int]]:
    """`count` paths spanning the FLOPs range: 50 x `count` distinct paths drawn uniformly inside
    `config.space`'s range (or as many as 1000 x `count` draws find, in a small space), then one
    per FLOPs quantile."""
    table, low, high = FlopsTable(space), config.space.flops_min * 1e6, config.space.flops_max * 1e6
    rng = np.random.default_rng(seed)
    drawn = {}
    for path in uniform_paths(space, rng, 1000 * count):
        if path is not None and low <= table.macs(path) <= high:
            drawn[path] = table.macs(path)
            if len(drawn) == 50 * count:
                break
    if len(drawn) < count:
        raise SystemExit(
            f"Only {len(drawn)} distinct paths in the FLOPs range {config.space.flops_min}-"
            f"{config.space.flops_max} M; --paths={count} needs as many."
        )
    ordered = sorted(drawn, key=drawn.get)
    picks = np.linspace(0, len(ordered) - 1, count).round().astype(int)
    return [list(ordered[i]) for i in picks]


class Study:
    def __init__(self, args):
        self.args = args
        self.out = os.path.abspath(args.out)
        self.file = os.path.join(self.out, "study.json")
        self.state = json.loads(Path(self.file).read_text()) if os.path.isfile(self.file) else {}
        self.state.setdefault("supernets", {})
        self.state.setdefault("standalone", {})
        if args.reference:  # another study's fixed paths and stand-alone figures, reused as they are
            reference = json.loads(Path(args.reference).read_text())
            self.state.setdefault("paths", reference["paths"])
            if self.state["paths"] != reference["paths"]:
                raise ValueError(f"{self.file} scores other fixed paths than --reference={args.reference}")
            self.state["standalone"] = {**reference["standalone"], **self.state["standalone"]}
            self.state.setdefault("random", reference.get("random", []))

    def save(self):
        atomic.write_json(self.file, self.state)

    def search_config(self, method: str, seed: int) -> config_lib.SearchConfig:
        overrides = f"cream.pick_method={method},train.seed={seed},selection.export=false"
        if self.args.smoke:
            overrides += "," + SMOKE_SEARCH
        return config_lib.load(config_lib.SearchConfig, self.args.config_file, overrides)

    def fixed_paths(self, space: SearchSpace) -> list[list[int]]:
        if "paths" not in self.state:
            config = self.search_config("meta", 0)
            self.state["paths"] = fixed_paths(space, config, self.args.paths, self.args.path_seed)
            self.save()
        return self.state["paths"]

    def supernet(self, method: str, seed: int) -> dict:
        key = f"{method}/seed{seed}"
        if key in self.state["supernets"]:
            return self.state["supernets"][key]
        config = self.search_config(method, seed)
        search = SearchRun(config, os.path.join(self.out, "supernets", f"{method}_seed{seed}"))
        began = time.time()
        result = search.run()
        seconds = time.time() - began
        evaluator = PathEvaluator(search.supernet, self.calibration(config))
        validation = data.load(config.data, "validation", training=False)
        inherited = {
            str(search.space.arch(p).path): evaluator.top1(p, validation, config.selection.eval_batches)
            for p in self.fixed_paths(search.space)
        }
        winner = result["winner"]
        inherited[winner["path"]] = winner["val_top1"]
        record = {
            "winner": winner["path"],
            "winner_mflops": winner["mflops"],
            "inherited": inherited,
            "seconds": round(seconds, 1),
            "train_seconds": result["timing"]["train_seconds"],
        }
        self.state["supernets"][key] = record
        self.save()
        return record

    @staticmethod
    def calibration(config):
        return [
            x for x, _ in data.load(config.data, "train", training=False).take(config.selection.recalibrate_batches)
        ]

    def standalone(self, space: SearchSpace, path: str, repeat: int = 0) -> float:
        """Test top-1 of `path` (its bracket string) trained alone with the short schedule."""
        runs = self.state["standalone"].setdefault(path, [])
        if len(runs) > repeat:
            return runs[repeat]
        overrides = (
            f"train.epochs=1,train.steps_per_epoch={self.args.standalone_steps},train.eval_every_epochs=0,"
            f"train.ema_decay=0.0,export.enabled=false,train.seed={100 + repeat},train.warmup_epochs=0.1"
        )
        if self.args.smoke:
            overrides += ",data.image_size=16,data.batch_size=32,train.eval_batches=2"
        config = config_lib.load(config_lib.RetrainConfig, self.args.retrain_config, overrides)
        arch = space.template.replace(choices=_stages(path))
        folder = os.path.join(self.out, "standalone", f"{_slug(path)}_r{repeat}")
        result = RetrainRun(config, arch, folder, overwrite=True).run()
        runs.append(result["accuracy"]["top1"]["keras"])
        self.save()
        return runs[repeat]

    def matched_random(self, space: SearchSpace, mflops: float) -> list[str]:
        """`--random` paths within +-5% of `mflops`, drawn uniformly. Paths drawn before for
        another winner count when they fall in this window too (winners sit near the budget,
        so this saves most of the stand-alone training), then fresh draws seeded by `mflops`."""
        table = FlopsTable(space)
        pool = self.state.setdefault("random", [])

        def matched(path) -> bool:
            return abs(table.macs(path) / 1e6 - mflops) <= 0.05 * mflops

        found = [name for name in pool if matched(_flat(name))][: self.args.random]
        rng = np.random.default_rng(int(mflops * 1000))
        for path in uniform_paths(space, rng, 100000):
            if len(found) >= self.args.random:
                break
            if path is None or not matched(path):
                continue
            name = str(space.arch(path).path)
            if name not in found:
                found.append(name)
                pool.append(name)
        self.save()
        return found

    def run(self):
        space = build_space(self.search_config("meta", 0))
        fixed = [str(space.arch(p).path) for p in self.fixed_paths(space)]
        for method, seed in itertools.product(self.args.methods, range(self.args.seeds)):
            self.supernet(method, seed)
        supernets = self.state["supernets"]
        winners = {r["winner"]: r["winner_mflops"] for r in supernets.values()}
        if self.args.rank_only:  # the fixed paths' reference only: tau and rho, no winner trained alone
            for path in fixed:
                self.standalone(space, path)
            return self.report(space, fixed, {})
        for path in dict.fromkeys(fixed + list(winners)):
            self.standalone(space, path)
        for path in fixed[: self.args.repeats]:
            self.standalone(space, path, repeat=1)
        random = {w: self.matched_random(space, f) for w, f in winners.items()}
        for paths in random.values():
            for path in paths:
                self.standalone(space, path)
        self.report(space, fixed, random)

    def report(self, space, fixed, random):
        alone = {path: runs[0] for path, runs in self.state["standalone"].items()}
        mflops = {path: FlopsTable(space).macs(_flat(path)) / 1e6 for path in alone}
        window = sorted(fixed, key=mflops.get)[len(fixed) // 4 : len(fixed) * 3 // 4 + 1]
        print(f"Search quality on {self.args.config_file}; machine: {machine()}\n")
        print(
            "| method | seed | tau (all) | rho (all) | tau (FLOPs window) | winner | winner MFLOPs | "
            "winner alone | random alone (mean +- sd) | winner - mean, in sd | supernet seconds |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        per_method = {}
        for key, record in sorted(self.state["supernets"].items()):
            method, seed = key.split("/")
            inherited = record["inherited"]
            tau = kendall_tau([inherited[p] for p in fixed], [alone[p] for p in fixed])
            rho = spearman_rho([inherited[p] for p in fixed], [alone[p] for p in fixed])
            tau_window = kendall_tau([inherited[p] for p in window], [alone[p] for p in window])
            nan = float("nan")
            peers = [alone[p] for p in random.get(record["winner"], [])]
            mean = statistics.mean(peers) if peers else nan
            sd = statistics.stdev(peers) if len(peers) > 1 else nan
            winner_alone = alone.get(record["winner"], nan)
            gap = (winner_alone - mean) / sd if sd else nan
            per_method.setdefault(method, []).append((tau, rho, tau_window, gap))
            print(
                f"| {method} | {seed[4:]} | {tau:.3f} | {rho:.3f} | {tau_window:.3f} | {record['winner']} | "
                f"{record['winner_mflops']:.2f} | {winner_alone:.2f} | {mean:.2f} +- {sd:.2f} | "
                f"{gap:.2f} | {record['train_seconds']:.0f} |"
            )
        print("\n| method | seeds | tau mean | tau spread (max - min) | rho mean | winner - mean, in sd (mean) |")
        print("|---|---|---|---|---|---|")
        for method, rows in per_method.items():
            taus = [r[0] for r in rows]
            print(
                f"| {method} | {len(rows)} | {statistics.mean(taus):.3f} | {max(taus) - min(taus):.3f} | "
                f"{statistics.mean(r[1] for r in rows):.3f} | {statistics.mean(r[3] for r in rows):.2f} |"
            )
        repeated = {p: runs[:2] for p, runs in self.state["standalone"].items() if len(runs) > 1}
        differences = [abs(a - b) for a, b in repeated.values()]
        print("\n| stand-alone noise | paths repeated | mean abs difference (points) | max |")
        print("|---|---|---|---|")
        print(
            f"| two seeds of the same path | {len(differences)} | "
            f"{statistics.mean(differences) if differences else float('nan'):.2f} | "
            f"{max(differences) if differences else float('nan'):.2f} |"
        )


def _stages(path: str) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(int(c) for c in stage.split(",")) for stage in path.strip("[]").split("]["))


def _flat(path: str) -> list[int]:
    return [c for stage in _stages(path) for c in stage]


def _slug(path: str) -> str:
    return "_".join("".join(stage.split(",")) for stage in path.strip("[]").split("]["))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_file", default=os.path.join(REPO, "configs", "search", "fashion_mnist.yaml"))
    parser.add_argument("--retrain_config", default=os.path.join(REPO, "configs", "retrain", "fashion_mnist.yaml"))
    parser.add_argument(
        "--out", help="the study's folder (default runs/search_quality; --smoke: a fresh temporary one)"
    )
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--paths", type=int, default=16, help="the fixed set scored by every supernet")
    parser.add_argument("--path_seed", type=int, default=2020)
    parser.add_argument("--random", type=int, default=8, help="random paths at each winner's FLOPs")
    parser.add_argument("--repeats", type=int, default=3, help="fixed paths trained twice, for the noise")
    # 300 steps ranked paths no better than noise (RESULTS.md: tau -0.04 against 900 steps).
    parser.add_argument("--standalone_steps", type=int, default=900, help="one epoch of this many steps")
    parser.add_argument(
        "--reference", help="another study's study.json: its fixed paths and stand-alone figures are reused"
    )
    parser.add_argument(
        "--rank_only",
        action="store_true",
        help="train the supernets and rank the fixed paths only (no winner or random path trained alone): "
        "with --reference, a quick check of a search variant's ranking",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny supernets and schedules, one seed, top1 and none (meta is tested elsewhere)",
    )
    args = parser.parse_args()
    args.methods = args.methods.split(",")
    if args.smoke:
        args.seeds, args.paths, args.random, args.repeats, args.standalone_steps = 1, 4, 1, 1, 3
        args.methods = ["top1", "none"]
    if not args.out and args.smoke:
        args.out = tempfile.mkdtemp(prefix="search-quality-smoke-")
        atexit.register(shutil.rmtree, args.out, ignore_errors=True)  # 250 MB of supernets per smoke run
    args.out = args.out or os.path.join(REPO, "runs", "search_quality")
    tf.get_logger().setLevel("ERROR")
    Study(args).run()


if __name__ == "__main__":
    main()
