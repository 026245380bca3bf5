"""What each of the official code's choices changes over a default-length search, run in the reference.

The PyTorch reference of the search step (tests/reference: the official training loop with every
place where cream_tf departs from it on purpose behind a field of `reference.search.Switches`)
runs the default search's setting (configs/search/fashion_mnist.yaml: its supernet, batches,
schedule, board, meta network) once with cream_tf's choices (OURS), once with all of the official
code's (OFFICIAL) and once per official choice alone. Every run starts from the same weights (one
freshly built cream_tf supernet, copied into the timm supernet), is fed the same batches (the
search's own pipeline: epoch e's batches drawn with seed train.seed * 1000 + e, augmentation as
configured) and trains the same sampled paths (cream_tf's rule, the prior restricted to the FLOPs
range, seeded by train.seed). The warm-up epochs (plain training of those paths) are the same
under every switch but `skipped_blocks`: they run once, with OURS, and every other run goes on
from there. OURS is also run from the warm-up's weights perturbed by 1e-6 (relative, per element;
--noise_runs of them): how far round-off alone moves a search fed the same batches and paths.
`--overrides=train.seed=N --out=OTHER` runs the study from another start, data order and paths:
the spread between seeds is the noise a difference must exceed to say more than "this seed".

Reported per run: the final board (paths, MFLOPs, training-batch top-1) and how many of its paths
OURS' board has too; the winner, as cream_tf.search.selection picks it (the board path with the
best held-out top-1, BatchNorm recomputed on 5 training batches first); the supernet's accuracy
(mean held-out top-1 of the 16 fixed paths of benchmarks/search_quality.py, recalibrated alike);
the mean matching value m and the teacher index's spread over the distillation steps; seconds.

    .venv/bin/python benchmarks/official_switches.py          # 17 runs, about 10 min each, 1 thread
    .venv/bin/python benchmarks/official_switches.py --smoke  # tiny, a minute
    .venv/bin/python benchmarks/official_switches.py --runs=ours,official,ours+1,m_from

Resumable: the shared inputs (initial weights, batches, paths, held-out images) and every run's
figures go to --out as soon as they exist; a run already there is not run again. The inputs are
made under TensorFlow's op determinism, so the same config makes the same inputs anew.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))  # the reference lives with the tests

import numpy as np
import torch
from reference.sampling import Sampler
from reference.search import OFFICIAL, OURS, ReferenceSearch, Settings, Switches
from reference.supernet import TimmSupernet, WeightMap, nchw

# isort: off
# TensorFlow after torch and timm (torchvision): see tests/reference/__init__.py.
import keras
import tensorflow as tf
from _common import machine, table
from search_quality import fixed_paths

from cream_tf import atomic, data
from cream_tf import config as config_lib
from cream_tf.flops import build_space
from cream_tf.supernet import Supernet

# isort: on

# The official choices alone, most consequential first (the order they run in).
SINGLE = (
    "m_from",
    "board_stores",
    "meta_student_step",
    "detach_m",
    "skipped_blocks",
    "warmup",
    "side_forwards_update_bn",
    "board_scoring",
    "meta_grad_tensors",
    "simulated_step_lr",
    "meta_optimizer",
    "meta_val_smoothing",
    "tie_break",
)
# The switches that change the warm-up epochs (plain training, no board): a run with any of them
# official trains from the initial weights; every other run starts from OURS' warm-up.
WARMUP_FIELDS = ("skipped_blocks",)
SMOKE = (
    "data.image_size=16,data.validation_size=256,data.batch_size=32,space.depths=[1,1,1,1,1],space.stem_channels=8,"
    "cream.board_size=3,cream.warmup_epochs=1,cream.meta_update_every=2,train.epochs=3,train.steps_per_epoch=6,"
    "selection.recalibrate_batches=2"
)


def switches_of(name: str) -> Switches:
    if name == "ours" or name.startswith("ours+"):
        return OURS
    if name == "official":
        return OFFICIAL
    return dataclasses.replace(OURS, **{name: getattr(OFFICIAL, name)})


def noise_seed(name: str) -> int:
    """'ours+2' -> 2: OURS from the warm-up's weights perturbed with this seed; 0: unperturbed."""
    return int(name.split("+")[1]) if "+" in name else 0


# --- the inputs every run shares -----------------------------------------------------------------


class Inputs:
    """Initial weights, the search's batches and paths, calibration and held-out images, fixed
    paths: made once, kept in --out (so a resumed study feeds the same)."""

    def __init__(self, config, out: str, fixed_count: int, fixed_seed: int):
        self.config, self.folder = config, Path(out) / "inputs"
        train = config.train
        self.space = build_space(config)
        template = self.space.template
        self.steps_per_epoch, self.total = train.steps_per_epoch, train.epochs * train.steps_per_epoch
        self.net = TimmSupernet(
            self.space.depths, template.num_classes, template.in_channels, template.stem_channels, template.stem_stride
        )
        self.meta = torch.nn.Linear(config.cream.slice * template.num_classes, 1)
        if not (self.folder / "done").exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            self._make(fixed_count, fixed_seed)
            (self.folder / "done").write_text("")
        state = torch.load(self.folder / "initial.pt")
        self.net.load_state_dict(state["net"])
        self.meta.load_state_dict(state["meta"])
        self.images = np.load(self.folder / "images.npy", mmap_mode="r")
        self.labels = np.load(self.folder / "labels.npy")
        held = np.load(self.folder / "held_out.npz")
        self.calibration = [torch.from_numpy(b) for b in held["calibration"]]
        self.validation = (torch.from_numpy(held["validation"]), torch.from_numpy(held["validation_labels"]))
        paths = json.loads((self.folder / "paths.json").read_text())
        self.paths, self.macs, self.fixed = [tuple(p) for p in paths["paths"]], paths["macs"], paths["fixed"]

    def _make(self, fixed_count: int, fixed_seed: int):
        config, template = self.config, self.space.template
        keras.utils.set_random_seed(config.train.seed)  # as SearchRun seeds before building
        supernet = Supernet(self.space)
        WeightMap(supernet, self.net).copy_to_torch()
        generator = torch.Generator().manual_seed(config.train.seed)
        with torch.no_grad():  # the official meta init (cream-algorithm.md): U(-1, 1), bias 0, as cream_tf's
            self.meta.weight.copy_(torch.rand(self.meta.weight.shape, generator=generator) * 2 - 1)
            self.meta.bias.zero_()
        torch.save({"net": self.net.state_dict(), "meta": self.meta.state_dict()}, self.folder / "initial.pt")
        # The pipeline's random crops and flips run in a parallel map, whose elements take the
        # random ops' draws in whatever order they run; under op determinism a seed gives the same
        # batches in every process, so the inputs can be made again.
        tf.config.experimental.enable_op_determinism()
        images, labels = [], []
        for epoch in range(config.train.epochs):  # TrainingRun.dataset's seeds, one worker
            batches = data.load(
                config.data, "train", training=True, repeat=True, seed=config.train.seed * 1000 + epoch
            ).take(self.steps_per_epoch)
            for x, y in batches:
                images.append(x.numpy())  # NHWC: ReferenceSearch.step takes the pipeline's layout
                labels.append(y.numpy().astype(np.int64))
        np.save(self.folder / "images.npy", np.stack(images))
        np.save(self.folder / "labels.npy", np.stack(labels))
        calibration = data.load(config.data, "train", training=False).take(config.selection.recalibrate_batches)
        validation = list(data.load(config.data, "validation", training=False))
        np.savez(
            self.folder / "held_out.npz",
            calibration=np.stack([nchw(x.numpy()).numpy() for x, _ in calibration]),
            validation=np.concatenate([nchw(x.numpy()).numpy() for x, _ in validation]),
            validation_labels=np.concatenate([y.numpy().astype(np.int64) for _, y in validation]),
        )
        sampler = Sampler(
            self.net,
            template.input_size,
            template.in_channels,
            (config.space.flops_min, config.space.flops_max),
            config.cream.prior,
            seed=config.train.seed,
        )
        drawn = [sampler.sample() for _ in range(self.total)]
        fixed = fixed_paths(self.space, config, fixed_count, fixed_seed)
        atomic.write_json(
            self.folder / "paths.json",
            {"paths": [list(p) for p, _ in drawn], "macs": [int(m) for _, m in drawn], "fixed": fixed},
        )

    def search(self, switches: Switches, settings: Settings) -> ReferenceSearch:
        """A ReferenceSearch from the initial supernet and meta layer."""
        return ReferenceSearch(copy.deepcopy(self.net), copy.deepcopy(self.meta), settings, switches)

    def after_warmup(self, switches: Switches, settings: Settings, seed: int):
        """(a ReferenceSearch at the first step after the warm-up epochs, the warm-up's step
        figures). The warm-up is plain training of the sampled paths, the same under every switch
        but `skipped_blocks` (SHARED_WARMUP): it runs once, with OURS, and is kept in --out.
        seed > 0: every supernet parameter is then multiplied by (1 + 1e-6 N(0, 1)), with that seed."""
        file = self.folder / "warmup.pt"
        if not file.exists():
            search = self.search(OURS, settings)
            steps = [_figures(search.step(*self.batch(step))) for step in range(self.warm_steps)]
            momenta = [search.optimizer.state.get(p, {}).get("momentum_buffer") for p in search.net.parameters()]
            torch.save({"net": search.net.state_dict(), "momenta": momenta, "steps": steps}, file)
        warm = torch.load(file)
        search = self.search(switches, settings)
        search.net.load_state_dict(warm["net"])
        for p, momentum in zip(search.net.parameters(), warm["momenta"]):
            if momentum is not None:
                search.optimizer.state[p]["momentum_buffer"] = momentum.clone()
        search.step_index = self.warm_steps
        if seed:
            generator = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for p in search.net.parameters():
                    p.mul_(1 + 1e-6 * torch.randn(p.shape, generator=generator))
        return search, [tuple(s) for s in warm["steps"]]

    @property
    def warm_steps(self) -> int:
        return self.config.cream.warmup_epochs * self.steps_per_epoch

    def batch(self, step: int):
        return self.images[step], self.labels[step], self.paths[step], self.macs[step]


def _figures(out: dict) -> tuple:
    """What a run keeps of a step: distilled?, m, teacher index, loss."""
    return (out["distill"], round(out["matching"], 5), out["teacher"], round(out["loss"], 5))


# --- held-out evaluation, as cream_tf.search.selection.PathEvaluator ---------------------------


def recalibrate(net: TimmSupernet, path, batches) -> None:
    """The BatchNorms `path` runs get their statistics' exact mean over `batches` (a training-mode
    forward each; momentum None is PyTorch's cumulative average, the unbiased variance as cream_tf)."""
    norms = [m for block in net.blocks_of(path) for m in block.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    momenta = [n.momentum for n in norms]
    for n in norms:
        n.reset_running_stats()
        n.momentum = None
    net.train()
    with torch.no_grad():
        for images in batches:
            net(images, path)
    for n, momentum in zip(norms, momenta):
        n.momentum = momentum


def held_out_top1(net: TimmSupernet, path, calibration, validation, batch: int = 500) -> float:
    recalibrate(net, path, calibration)
    images, labels = validation
    net.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(images), batch):
            logits = net(images[start : start + batch], path)
            correct += int((logits.argmax(dim=1) == labels[start : start + batch]).sum())
    net.train()
    return 100.0 * correct / len(images)


# --- one run -------------------------------------------------------------------------------------


def run(name: str, inputs: Inputs, out: Path) -> dict:
    file = out / "runs" / f"{name}.json"
    if file.exists():
        return json.loads(file.read_text())
    config = inputs.config
    settings = Settings.from_config(config, inputs.steps_per_epoch)
    switches, began = switches_of(name), time.time()
    if all(getattr(switches, field) == getattr(OURS, field) for field in WARMUP_FIELDS):
        search, steps = inputs.after_warmup(switches, settings, noise_seed(name))
    else:
        search, steps = inputs.search(switches, settings), []
    warm_started = search.step_index > 0
    for step in range(search.step_index, inputs.total):
        steps.append(_figures(search.step(*inputs.batch(step))))
        if (step + 1) % 100 == 0:
            print(f"  {name}: step {step + 1}/{inputs.total}, {time.time() - began:.0f} s", flush=True)
    seconds, net = time.time() - began, search.net
    space, held = inputs.space, (inputs.calibration, inputs.validation)
    board = [
        {
            "path": str(space.arch(list(e.path)).path),
            "mflops": round(e.macs / 1e6, 3),
            "train_top1": round(e.accuracy, 3),
            "val_top1": round(held_out_top1(net, e.path, *held), 2),
        }
        for e in search.board.entries
    ]
    winner = max(board, key=lambda r: (r["val_top1"], -r["mflops"])) if board else None
    fixed = [held_out_top1(net, tuple(p), *held) for p in inputs.fixed]
    distilled = [s for s in steps if s[0]]
    teachers = [s[2] for s in distilled]
    record = {
        "switches": dataclasses.asdict(switches_of(name)),
        "noise_seed": noise_seed(name),
        "from_shared_warmup": warm_started,
        "board": board,
        "winner": winner,
        "supernet_top1": round(statistics.mean(fixed), 3),
        "fixed_top1": [round(v, 2) for v in fixed],
        "mean_m": round(statistics.mean(s[1] for s in distilled), 4) if distilled else None,
        "sd_m": round(statistics.pstdev(s[1] for s in distilled), 4) if distilled else None,
        "teacher_mean": round(statistics.mean(teachers), 2) if teachers else None,
        "teacher_sd": round(statistics.pstdev(teachers), 2) if teachers else None,
        "teachers_distinct": len(set(teachers)),
        "distill_steps": len(distilled),
        "final_loss": round(statistics.mean(s[3] for s in steps[-inputs.steps_per_epoch :]), 4),
        "seconds": round(seconds, 1),  # the warm-up's excluded where it was shared
        "eval_seconds": round(time.time() - began - seconds, 1),
        "steps": steps,
    }
    file.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(file, record)
    return record


# --- the report ----------------------------------------------------------------------------------


def shared(a: dict, b: dict) -> int:
    return len({r["path"] for r in a["board"]} & {r["path"] for r in b["board"]})


def report(records: dict, config_file: str, overrides: str) -> None:
    print(f"\nThe reference search on {config_file}{' (' + overrides + ')' if overrides else ''}")
    print(f"machine: {machine(('torch', 'timm', 'tensorflow'))}; torch threads {torch.get_num_threads()}\n")
    ours = records.get("ours")
    rows = []
    for name, r in records.items():
        w = r["winner"] or {"path": "-", "mflops": float("nan"), "val_top1": float("nan")}
        changed = [k for k, v in r["switches"].items() if v != getattr(OURS, k)]
        what = (
            "OURS"
            if name == "ours"
            else f"OURS, weights x (1 + 1e-6 N) after the warm-up, seed {r['noise_seed']}"
            if name.startswith("ours+")
            else "OFFICIAL (all)"
            if name == "official"
            else f"{changed[0]}={getattr(OFFICIAL, changed[0])!r}"
        )
        rows.append(
            (
                what,
                f"{shared(r, ours)}/{len(r['board'])}" if ours else "-",
                w["path"],
                f"{w['mflops']:.2f}",
                f"{w['val_top1']:.2f}",
                f"{r['supernet_top1']:.2f}",
                "-" if r["mean_m"] is None else f"{r['mean_m']:.3f} +- {r['sd_m']:.3f}",
                "-" if r["teacher_mean"] is None else f"{r['teacher_mean']:.1f} +- {r['teacher_sd']:.1f}",
                f"{r['final_loss']:.3f}",
                f"{r['seconds']:.0f}",
            )
        )
    header = (
        "run",
        "board shared with OURS",
        "winner",
        "winner MFLOPs",
        "winner held-out top-1",
        "supernet top-1 (16 paths)",
        "m (mean +- sd)",
        "teacher index (mean +- sd)",
        "last epoch's loss",
        "seconds",
    )
    print(table(header, rows))
    noise = [r for n, r in records.items() if n == "ours" or n.startswith("ours+")]
    if len(noise) > 1:
        pairs = [shared(a, b) for i, a in enumerate(noise) for b in noise[i + 1 :]]
        supernet = [r["supernet_top1"] for r in noise]
        winner = [r["winner"]["val_top1"] for r in noise if r["winner"]]
        print(
            f"\nNoise, OURS and {len(noise) - 1} run(s) from its warm-up perturbed by 1e-6: "
            f"board paths shared {min(pairs)}-{max(pairs)} of "
            f"{len(noise[0]['board'])}; supernet top-1 {min(supernet):.2f}-{max(supernet):.2f}; winner held-out "
            f"top-1 {min(winner):.2f}-{max(winner):.2f}; winners {sorted({r['winner']['path'] for r in noise})}"
        )
    print("\nThe final boards, best first: path MFLOPs/training-batch top-1 (held-out top-1)\n")
    print(
        table(
            ("run", "board"),
            (
                (
                    name,
                    "; ".join(
                        f"{b['path']} {b['mflops']:.2f}/{b['train_top1']:.1f} ({b['val_top1']:.2f})" for b in r["board"]
                    ),
                )
                for name, r in records.items()
            ),
        )
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_file", default=os.path.join(REPO, "configs", "search", "fashion_mnist.yaml"))
    parser.add_argument(
        "--overrides", default="", help="config overrides, e.g. train.seed=7 (another start, data order and paths)"
    )
    parser.add_argument("--out", help="default runs/official_switches; --smoke: a fresh temporary folder")
    parser.add_argument(
        "--runs",
        help="comma-separated, in order: ours, official, ours+N (OURS perturbed, seed N), and Switches fields "
        "(that official choice alone); default: ours, official, the noise runs, then every field",
    )
    parser.add_argument("--noise_runs", type=int, default=2)
    parser.add_argument("--paths", type=int, default=16, help="fixed paths for the supernet's accuracy")
    parser.add_argument("--path_seed", type=int, default=2020)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="a tiny supernet and schedule, four runs")
    parser.add_argument("--report_only", action="store_true", help="print the tables of the runs in --out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    tf.get_logger().setLevel("ERROR")
    overrides = ",".join(o for o in (SMOKE if args.smoke else "", args.overrides) if o)
    if args.smoke:
        args.paths, args.noise_runs = 4, 1
        args.runs = args.runs or "ours,official,ours+1,m_from"
    if not args.out and args.smoke:
        args.out = tempfile.mkdtemp(prefix="official-switches-smoke-")
    args.out = args.out or os.path.join(REPO, "runs", "official_switches")
    names = (
        args.runs.split(",")
        if args.runs
        else ["ours", "official", *(f"ours+{i}" for i in range(1, args.noise_runs + 1)), *SINGLE]
    )
    for name in names:
        switches_of(name)  # a misspelt field fails here, before any run
    config = config_lib.load(config_lib.SearchConfig, args.config_file, overrides)
    out = Path(args.out)
    began = time.time()
    inputs = Inputs(config, args.out, args.paths, args.path_seed)
    print(
        f"inputs ready in {time.time() - began:.0f} s: {inputs.total} steps, depths {inputs.space.depths}", flush=True
    )
    records = {}
    for name in names:
        if args.report_only and not (out / "runs" / f"{name}.json").exists():
            continue
        records[name] = run(name, inputs, out)
        r = records[name]
        print(
            f"{name}: supernet top-1 {r['supernet_top1']:.2f}, winner {r['winner']}, {r['seconds']:.0f} s", flush=True
        )
    report(records, args.config_file, overrides)
    if args.smoke:
        shutil.rmtree(args.out, ignore_errors=True)


if __name__ == "__main__":
    main()
