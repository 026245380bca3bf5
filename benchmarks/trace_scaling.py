"""How building, tracing and running the search's train step scale with the replicas.

For each supernet (the default Fashion-MNIST one and the ImageNet one, 21 positions) and each
replica count (logical CPU devices under MirroredStrategy), a fresh process builds the supernet
and the Cream trainer, then times:
- build: the supernet, the trainer and their variables, in the strategy's scope;
- trace: turning the replicated train step (a distillation step on a full board, as most steps
  run) into a graph: `get_concrete_function`, Python only;
- first step: the first call, which optimizes the graph (Grappler) and runs it once;
- CPU s: the process's CPU time (all its threads) over trace and first step: the work, which
  stays what it is when several processes share too few cores and their wall times stretch;
- step: the median of a few more steps;
and counts the graph's ops (the step's own graph plus every function in its library), and the
process's peak resident memory. Then, with `cream.pick_method: meta`, the same for the meta
update's own graph (a search builds it at its first meta update, and runs it before that
step's train step), in a second table. Each configuration runs in its own process, so one does
not inherit another's memory or caches.

    .venv/bin/python benchmarks/trace_scaling.py                          # both supernets, 1 2 4 8
    .venv/bin/python benchmarks/trace_scaling.py --configs=fashion_mnist --replicas=1,2
    .venv/bin/python benchmarks/trace_scaling.py --space=tiny --launch=workers   # 8 small processes
    .venv/bin/python benchmarks/trace_scaling.py --configs=fashion_mnist,fashion_mnist+extended --replicas=1
    .venv/bin/python benchmarks/trace_scaling.py --smoke                  # the tiny space, 1 replica

Prints Markdown tables and the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = (  # a small space (5 positions of 16x16 images), for many processes on a small host
    "data.image_size=16,space.depths=[1,1,1,1,1],space.stem_channels=8,space.stem_stride=1,cream.board_size=2,cream.pick_method=top1"
)


def measure(args) -> dict:
    """One configuration, in this (fresh) process."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if args.launch == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * args.replicas)
    import keras
    import numpy as np

    from cream_tf import config as config_lib
    from cream_tf.flops import build_space
    from cream_tf.search.board import Entry, PrioritizedBoard
    from cream_tf.search.trainer import SearchModel
    from cream_tf.supernet import Supernet

    search, _, preset = args.config.partition("+")  # NAME+PRESET: a space preset over the search config
    config_file = os.path.join(REPO, "configs", "search", f"{search}.yaml")
    config_file += f",{os.path.join(REPO, 'configs', 'spaces', f'{preset}.yaml')}" if preset else ""
    overrides = f"data.batch_size={args.batch * args.replicas},space.dropout=0.0"
    overrides += "".join("," + o for o in [TINY if args.tiny else "", args.params_override] if o)
    config = config_lib.load(config_lib.SearchConfig, config_file, overrides)
    if args.launch == "mirrored":
        strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(args.replicas)])
    else:  # this process is one of `replicas` workers (TF_CONFIG), as main.py --local_workers starts them
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    keras.utils.set_random_seed(0)
    began = time.perf_counter()
    space = build_space(config)
    with strategy.scope():
        trainer = SearchModel(Supernet(space), config, config.data.batch_size)
        trainer.compile(optimizer=None)
    build = time.perf_counter() - began

    t, rng = space.template, np.random.default_rng(0)
    shape = (config.data.batch_size, t.input_size, t.input_size, t.in_channels)
    images = rng.normal(size=shape).astype("float32")
    labels = rng.integers(0, t.num_classes, config.data.batch_size).astype("int32")
    board = PrioritizedBoard(config.cream.board_size, config.cream.accuracy_gap)
    s = config.cream.slice
    positions = len(space.positions)
    for k in range(config.cream.board_size):  # a full board: scoring costs its most
        probs = rng.dirichlet(np.ones(t.num_classes), s).astype("float32")
        board.offer(Entry(tuple(rng.integers(0, 6, positions)), 50.0 + k, k, images[:s], probs))
    trainer.load_board(board)
    trainer.set_step(np.full(positions, 3), 0.01, distill=True)
    dataset = strategy.distribute_datasets_from_function(
        lambda context: tf.data.Dataset.from_tensors((images[: args.batch], labels[: args.batch])).repeat()
    )
    batch = next(iter(dataset))
    result = {"config": args.config, "launch": args.launch, "replicas": args.replicas, "positions": positions}
    result["build"] = build
    # The train step first, as a search starts; the meta update's graph when it is first needed.
    steps = [("", trainer.train_step)]
    steps += [("meta_", trainer.meta_update)] if config.cream.pick_method == "meta" else []
    for prefix, step_function in steps:

        @tf.function
        def step(data, step_function=step_function):  # what Keras' train function does around a step
            outputs = strategy.run(step_function, args=(data,))
            return strategy.experimental_local_results(next(iter(outputs.values())))[0]

        cpu = time.process_time()
        began = time.perf_counter()
        concrete = step.get_concrete_function(batch)
        trace = time.perf_counter() - began
        graph = concrete.graph.as_graph_def()
        began = time.perf_counter()
        step(batch).numpy()
        first = time.perf_counter() - began
        cpu = time.process_time() - cpu
        times = []
        for _ in range(args.steps):
            began = time.perf_counter()
            step(batch).numpy()
            times.append(time.perf_counter() - began)
        result.update(
            {
                prefix + "trace": trace,
                prefix + "first": first,
                prefix + "cpu": cpu,
                prefix + "step": statistics.median(times),
                prefix + "ops": len(graph.node) + sum(len(f.node_def) for f in graph.library.function),
                prefix + "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            }
        )
    return result


def run_children(config: str, launch: str, replicas: int, args) -> list[dict]:
    """One process (mirrored) or `replicas` processes at once (workers); their results."""
    command = [sys.executable, os.path.abspath(__file__), f"--child={config}:{launch}:{replicas}"]
    command += [f"--batch={args.batch}", f"--steps={args.steps}", f"--params_override={args.params_override}"]
    command += ["--space=tiny"] if args.tiny else []
    envs = [dict(os.environ)]
    if launch == "workers":
        from cream_tf.launch import free_ports

        cluster = {"worker": [f"localhost:{port}" for port in free_ports(replicas)]}
        envs = [
            {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
            for i in range(replicas)
        ]
    processes = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for env in envs
    ]
    results = []
    for process in processes:
        out, err = process.communicate()
        found = [line[7:] for line in out.splitlines() if line.startswith("RESULT ")]
        if process.returncode or not found:
            sys.exit(f"{config}, {launch}, {replicas} replicas failed (exit {process.returncode}):\n{err[-3000:]}")
        results.append(json.loads(found[0]))
    return results


def table(rows, headers, keys, formats, ratios, extra=None):
    """A Markdown table of `rows`: the columns named by headers/keys, then `extra` (header,
    formatter), then each of `ratios` against the supernet's 1-replica row."""
    names = {"trace": "trace", "first": "first step", "cpu": "CPU", "peak_gb": "peak RSS"}
    ratio_headers = [names[key.removeprefix("meta_")] + " / 1 replica" for key in ratios]
    headers = ["supernet", "positions", "processes", "replicas", *headers, *([extra[0]] if extra else [])]
    headers += ratio_headers
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    base = {}
    for r in rows:
        one = base.setdefault(r["config"], r)
        processes = r["replicas"] if r["launch"] == "workers" else 1
        cells = [r["config"], r["positions"], processes, r["replicas"]]
        cells += [f.format(r[key]) for key, f in zip(keys, formats)]
        cells += [extra[1](r)] if extra else []
        cells += [f"{r[key] / one[key]:.2f}" for key in ratios]
        print("| " + " | ".join(str(c) for c in cells) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--configs",
        default=None,
        help="supernets by search config, NAME or NAME+PRESET (configs/spaces/PRESET.yaml over it; default: "
        "fashion_mnist,imagenet)",
    )
    parser.add_argument("--replicas", default=None, help="replica counts (default: 1,2,4,8)")
    parser.add_argument("--space", choices=("full", "tiny"), default="full", help="tiny: " + TINY)
    parser.add_argument(
        "--launch",
        default=None,
        help="mirrored: one process, MirroredStrategy over logical devices; workers: one process per replica "
        "(main.py --local_workers); default: both",
    )
    parser.add_argument("--batch", type=int, default=8, help="images per replica (the meta step takes 2 slices of 4)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps of each kind after the first (default 3)")
    parser.add_argument("--params_override", default="", help="more config overrides, as main.py takes them")
    parser.add_argument("--smoke", action="store_true", help="the tiny space with meta: 1 replica, 1 step")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # CONFIG:LAUNCH:REPLICAS, measured in this process
    args = parser.parse_args()
    args.tiny = args.space == "tiny" or args.smoke
    if args.child:
        args.config, args.launch, replicas = args.child.split(":")
        args.replicas = int(replicas)
        print("RESULT " + json.dumps(measure(args)), flush=True)
        return
    smoke = args.smoke
    if smoke:  # the tiny space's top1 leaves the meta step out; the smoke measures it too
        args.params_override = ",".join(o for o in ("cream.pick_method=meta", args.params_override) if o)
    args.configs = args.configs or ("fashion_mnist" if smoke else "fashion_mnist,imagenet")
    args.replicas = args.replicas or ("1" if smoke else "1,2,4,8")
    args.launch = args.launch or ("workers" if smoke else "mirrored,workers")
    args.steps = args.steps or (1 if smoke else 3)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _common import machine

    rows = []
    for config in args.configs.split(","):
        counts = [int(r) for r in args.replicas.split(",")]
        runs = [("mirrored", 1)] if 1 in counts else []  # the baseline: one replica, one process
        runs += [(launch, n) for launch in args.launch.split(",") for n in counts if n > 1]
        for launch, replicas in runs:
            results = run_children(config, launch, replicas, args)
            row = {key: max(r[key] for r in results) for key in results[0] if key not in ("config", "launch")}
            row.update(config=config, launch=launch, replicas=replicas)
            row["total_gb"] = sum(r["peak_gb"] for r in results)
            rows.append(row)
            print(f"measured {config}, {launch}, {replicas} replicas", file=sys.stderr, flush=True)
    space = " (the tiny space)" if args.tiny else ""
    more = f", {args.params_override}" if args.params_override else ""
    print(f"Trace scaling{space}, {args.batch} images per replica{more}; machine: {machine()}\n")
    print("The train step (every step without a meta update; built before the first step):\n")
    table(
        rows,
        ["build s", "trace s", "first step s", "CPU s", "step s", "graph ops", "peak RSS GB (per process)"],
        ["build", "trace", "first", "cpu", "step", "ops", "peak_gb"],
        ["{:.1f}", "{:.1f}", "{:.1f}", "{:.1f}", "{:.3f}", "{}", "{:.2f}"],
        ["trace", "first", "cpu", "peak_gb"],
        extra=("peak RSS GB (all)", lambda r: f"{r['total_gb']:.2f}"),
    )
    meta_rows = [r for r in rows if "meta_trace" in r]
    if meta_rows:
        print("\nThe meta update (its own graph, built at the first meta update; then that step's train step runs):\n")
        table(
            meta_rows,
            ["meta trace s", "meta first step s", "meta CPU s", "meta step s", "meta graph ops"]
            + ["peak RSS GB with meta"],
            ["meta_trace", "meta_first", "meta_cpu", "meta_step", "meta_ops", "meta_peak_gb"],
            ["{:.1f}", "{:.1f}", "{:.1f}", "{:.3f}", "{}", "{:.2f}"],
            ["meta_trace", "meta_first", "meta_cpu", "meta_peak_gb"],
        )
    print(
        "\nA row with several processes shows the slowest process's times, CPU and memory; the processes run at "
        "once, so on a machine with fewer cores than processes they share the cores: their wall times stretch, "
        "their CPU seconds do not."
    )


if __name__ == "__main__":
    main()
