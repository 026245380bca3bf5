"""Does distillation from prioritized paths speed the supernet's convergence? The paper says it
"improve[s] the convergence ratio and performance of the hypernetwork". Measured here as curves:
the default search's supernet trained with `cream.pick_method` meta (Cream), top1 (the best board
path teaches) and none (SPOS, no distillation), several seeds each, at the default budget and at
a multiple of its epochs (the warm-up kept at the default's epochs).

After every epoch it records the mean training top-1 and loss of the sampled paths (each step's
batch, before its update) and the mean held-out top-1 of a fixed set of paths with inherited
weights (BatchNorm recalibrated per path on `selection.recalibrate_batches` training batches, the
whole held-out split). The fixed set is the search-quality study's: one path per FLOPs quantile
of many drawn with seed 2020. A seed gives every method the same initial supernet and the same
sampled paths, so the methods are compared pairwise per seed. The default search's
`train.deterministic: false` is kept, so the input pipeline and some kernels still vary from run
to run: the warm-up epochs, where every method trains alike, show how much that moves the curves.
The training loss is each method's objective (with distillation, m KD + (2 - m) CE over 2), so
only the top-1 figures compare like with like after the warm-up.

    .venv/bin/python benchmarks/convergence.py                      # 3 methods x 3 seeds, x1 and x3 (hours)
    .venv/bin/python benchmarks/convergence.py --factors=1 --runs=meta:0,none:0 --threads=1   # a share of it
    .venv/bin/python benchmarks/convergence.py --report             # tables and plot from what exists
    .venv/bin/python benchmarks/convergence.py --smoke              # tiny supernets, `none` only, 2 seeds

Resumable: each run's figures go to --out/<method>_seed<S>_x<F>.json after every epoch and its
supernet resumes from its own checkpoint, so runs can be shared between processes (--runs) and a
stopped study continues. Prints Markdown tables and the machine; writes --out/convergence.png.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from _common import machine, table
from search_quality import METHODS, REPO, SMOKE_SEARCH, fixed_paths


def run_file(out: str, method: str, seed: int, factor: int) -> Path:
    return Path(out) / f"{method}_seed{seed}_x{factor}.json"


def train(args, method: str, seed: int, factor: int) -> None:
    """Trains one supernet, recording the curves after every epoch; resumes where it stopped."""
    import tensorflow as tf

    from cream_tf import atomic, data
    from cream_tf import config as config_lib
    from cream_tf.search.run import SearchRun
    from cream_tf.search.selection import PathEvaluator

    file = run_file(args.out, method, seed, factor)
    record = json.loads(file.read_text()) if file.is_file() else {"epochs": []}
    overrides = f"cream.pick_method={method},train.seed={seed}" + ("," + SMOKE_SEARCH if args.smoke else "")
    epochs = config_lib.load(config_lib.SearchConfig, args.config_file, overrides).train.epochs * factor
    config = config_lib.load(config_lib.SearchConfig, args.config_file, f"{overrides},train.epochs={epochs}")
    if len(record["epochs"]) >= epochs:
        return
    calibration = [
        x for x, _ in data.load(config.data, "train", training=False).take(config.selection.recalibrate_batches)
    ]
    held_out = data.load(config.data, "validation", training=False)

    class Recorded(SearchRun):
        evaluator = None  # built once: its traced recalibration and prediction serve every epoch

        def end_epoch(self, logs):
            super().end_epoch(logs)
            if self.evaluator is None:
                self.evaluator = PathEvaluator(self.supernet, calibration)
                self.paths = fixed_paths(self.space, self.config, args.paths, args.path_seed)
            top1 = [self.evaluator.top1(p, held_out, config.selection.eval_batches) for p in self.paths]
            del record["epochs"][self.epoch - 1 :]  # written before a restart from an earlier checkpoint
            record["epochs"].append(
                {
                    "train_loss": self.sums["loss"] / self.steps_per_epoch,
                    "train_top1": 100.0 * self.sums["correct"] / self.sums["count"],
                    "held_out_top1": top1,
                    "seconds": round(time.time() - self.epoch_began, 1),
                }
            )
            record["meta_updates"] = self.meta_updates
            atomic.write_json(file, record)
            print(
                f"{method} seed {seed} x{factor} epoch {self.epoch}/{epochs}: train top-1 "
                f"{record['epochs'][-1]['train_top1']:.2f}, held-out top-1 (mean of {len(top1)}) "
                f"{np.mean(top1):.2f}",
                flush=True,
            )

    tf.get_logger().setLevel("ERROR")
    Recorded(config, Path(args.out) / "supernets" / file.stem).train()


# --- the report ----------------------------------------------------------------------------------


def t_quantile(n: int) -> float:
    """The two-sided 95% quantile of Student's t with n - 1 degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1))


def load(args, factor: int) -> dict[str, dict[int, list[dict]]]:
    """method -> seed -> per-epoch figures, for the runs that have every epoch."""
    found = {}
    for method in args.methods:
        for seed in range(args.seeds):
            file = run_file(args.out, method, seed, factor)
            if file.is_file():
                found.setdefault(method, {})[seed] = json.loads(file.read_text())["epochs"]
    length = max((len(e) for runs in found.values() for e in runs.values()), default=0)
    complete = {m: {s: e for s, e in runs.items() if len(e) == length} for m, runs in found.items()}
    return {m: runs for m, runs in complete.items() if runs}


def curves(runs: dict[int, list[dict]], key: str) -> np.ndarray:
    """seeds x epochs of `key` (the held-out top-1 averaged over the fixed paths)."""
    return np.array([[np.mean(e[key]) for e in epochs] for _, epochs in sorted(runs.items())])


def _at(values: np.ndarray, index) -> np.ndarray:
    """Per seed: one epoch's figure (an int index), or the mean over a slice of epochs."""
    return values[:, index] if isinstance(index, int) else values[:, index].mean(axis=1)


def mean_sd(values) -> str:
    values = list(values)
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.2f} +- {sd:.2f}"


def paired(a: np.ndarray, b: np.ndarray) -> str:
    """Mean of a - b over the seeds both have, with its 95% t interval."""
    differences = a - b
    n = len(differences)
    if n < 2:
        return "n/a"
    half = t_quantile(n) * differences.std(ddof=1) / np.sqrt(n)
    return f"{differences.mean():+.2f} [{differences.mean() - half:+.2f}, {differences.mean() + half:+.2f}]"


def report(args, warmup_epochs: int) -> None:
    print(f"Convergence of the supernet ({args.config_file}); machine: {machine()}\n")
    figures = []
    for factor in args.factors:
        runs = load(args, factor)
        if not runs:
            continue
        print(f"### x{factor} epochs; seeds: " + "; ".join(f"{m} {sorted(r)}" for m, r in runs.items()))
        # meta - none is paired by seed: a seed gives both the same initial supernet and sampled paths.
        both = sorted(set(runs.get("meta", {})) & set(runs.get("none", {})))
        for key, name in (
            ("held_out_top1", "held-out top-1 of the fixed paths"),
            ("train_top1", "training top-1"),
            ("train_loss", "training loss"),
        ):
            data = {method: curves(r, key) for method, r in runs.items()}
            epochs = next(iter(data.values())).shape[1]
            pairs = {m: curves({s: runs[m][s] for s in both}, key) for m in ("meta", "none")} if len(both) > 1 else {}
            header = ["epoch", *(f"{m} (mean +- sd)" for m in data)]
            if pairs:
                header += [f"meta - none, {len(both)} paired seeds [95% CI]", "its change since the warm-up"]
            # Both methods run the same warm-up steps, so meta - none at its end is run-to-run noise;
            # the change since then is what the distillation epochs added to it.
            since = {m: p - p[:, [warmup_epochs - 1]] for m, p in pairs.items()}
            after = slice(warmup_epochs, epochs)  # the distillation epochs: their mean is the area under the curve
            selections = [(str(e + 1) + (" (warm-up)" if e < warmup_epochs else ""), e) for e in range(epochs)]
            rows = []
            for label, index in [*selections, ("mean after warm-up", after)]:
                pick = functools.partial(_at, index=index)
                row = [label, *(mean_sd(pick(d)) for d in data.values())]
                if pairs:
                    distilled = not isinstance(index, int) or index >= warmup_epochs
                    row.append(paired(pick(pairs["meta"]), pick(pairs["none"])))
                    row.append(paired(pick(since["meta"]), pick(since["none"])) if distilled else "")
                rows.append(row)
            print(f"\n{name}\n\n" + table(header, rows) + "\n")
        figures.append((factor, runs))
    if figures:
        plot(figures, os.path.join(args.out, "convergence.png"), warmup_epochs)


def plot(figures, file: str, warmup_epochs: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    keys = (
        ("held_out_top1", "held-out top-1, fixed paths (%)"),
        ("train_top1", "training top-1 (%)"),
        ("train_loss", "training loss"),
    )
    fig, axes = pyplot.subplots(len(figures), 3, figsize=(13, 3.6 * len(figures)), squeeze=False)
    for row, (factor, runs) in enumerate(figures):
        for col, (key, label) in enumerate(keys):
            ax = axes[row][col]
            for method, method_runs in runs.items():
                values = curves(method_runs, key)
                x = np.arange(1, values.shape[1] + 1)
                mean, sd = values.mean(axis=0), values.std(axis=0, ddof=1) if len(values) > 1 else 0 * values[0]
                ax.plot(x, mean, label=f"{method} ({len(values)} seeds)")
                ax.fill_between(x, mean - sd, mean + sd, alpha=0.2)
            ax.axvspan(0.5, warmup_epochs + 0.5, color="grey", alpha=0.1)
            ax.set_xlabel(f"epoch (x{factor} budget; grey: warm-up)")
            ax.set_ylabel(label)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(file + ".tmp.png", dpi=90)
    os.replace(file + ".tmp.png", file)
    print(f"Plot: {file}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_file", default=os.path.join(REPO, "configs", "search", "fashion_mnist.yaml"))
    parser.add_argument("--out", help="the study's folder (default runs/convergence)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--factors", default="1,3", help="budgets, as multiples of the config's epochs")
    parser.add_argument("--runs", help="only these runs, method:seed,... (to share the study between processes)")
    parser.add_argument("--paths", type=int, default=16, help="the fixed set scored after every epoch")
    parser.add_argument("--path_seed", type=int, default=2020)
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow's intra-op threads (0: all cores)")
    parser.add_argument("--report", action="store_true", help="only the tables and the plot")
    parser.add_argument("--smoke", action="store_true", help="tiny supernets, `none` only, 2 seeds, x1 only")
    args = parser.parse_args()
    args.methods = args.methods.split(",")
    args.factors = [int(f) for f in args.factors.split(",")]
    if args.smoke:
        args.methods, args.seeds, args.factors, args.paths = ["none"], 2, [1], 4
    if not args.out and args.smoke:
        args.out = tempfile.mkdtemp(prefix="convergence-smoke-")
        atexit.register(shutil.rmtree, args.out, ignore_errors=True)
    args.out = args.out or os.path.join(REPO, "runs", "convergence")
    os.makedirs(args.out, exist_ok=True)
    wanted = [(m, s) for m in args.methods for s in range(args.seeds)]
    if args.runs:
        wanted = [(m, int(s)) for m, s in (r.split(":") for r in args.runs.split(","))]
    if not args.report:
        if args.threads:
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(args.threads)
            tf.config.threading.set_inter_op_parallelism_threads(args.threads)
        for factor in args.factors:
            for method, seed in wanted:
                train(args, method, seed, factor)
    from cream_tf import config as config_lib

    report(
        args,
        config_lib.load(
            config_lib.SearchConfig, args.config_file, SMOKE_SEARCH if args.smoke else ""
        ).cream.warmup_epochs,
    )


if __name__ == "__main__":
    main()
