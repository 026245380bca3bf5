"""Latency of Cream networks in LiteRT, predicted from a table of measured blocks.

A network of the space is a chain of blocks whose shapes the architecture fixes (cream_tf.arch),
so its latency on a runtime is close to the sum of its blocks' latencies measured alone, as
Once-for-All's lookup tables predict it (mit-han-lab/once-for-all, `latency_lookup_table.py`).
The table holds one entry per block shape: every block is converted on its own to a TFLite file
the way cream_tf.export converts a whole network (float32, or full-integer int8 with int8 input
and output) and timed in LiteRT's interpreter with its default XNNPACK delegate at a given thread
count. A network's prediction is that sum times one calibration scale per precision and input
size: the median, over a few whole networks of the space measured the same way (its calibration
networks, drawn with their own seed), of measured over summed latency. On this host the sum alone
reads 3-7% low (a sum of pieces' fastest figures undercuts the network's fastest, and a block
timed alone runs with hot caches); `benchmarks/latency.py` measures how close both come to other
whole networks.

    table = LatencyTable.open("runs/latency/host-t1.json", threads=1)   # or a new, empty one
    wanted = pieces_of_space(space) | drawn_archs(space, (0, 600))
    measure_missing(table, wanted, ("float32",))                          # resumable
    predict_ms(arch, table, "float32")

The table file (JSON; a phone's from `scripts/latency_adb.sh` has the same layout):

    {"format": "cream_tf.latency/1",
     "runtime": "ai-edge-litert 2.3.0",   # what ran the files; a table is only extended or
     "device": "host: AMD EPYC ...",      # compared on the runtime and thread count it records
     "threads": 1, "delegate": "xnnpack",
     "entries": {"float32": {KEY: {"ms": ..., and how it was timed}, ...},
                 "int8": {...}},
     "calibration": {"float32": {ARCH: {"ms": ..., ...}, ...}, "int8": {...}}}

KEY is the block's shape (`block_key`): kind, kernel, stride, dilation, input/output/middle/SE
channels, activation and input side, e.g. `ir-k5-s2-d1-i16-o24-m96-se24-swish@28`, and for the
head (global pool, 1x1 conv, classifier) `head-i320-h1280-c10-swish@2`. Any space whose blocks
have those shapes reads the same entries. Identity blocks (skips) vanish in conversion and cost
nothing. ARCH is a calibration network's architecture string (cream_tf.arch.Arch), timed whole.
Times are per `invoke()` with the input already set: what a network runs, not Python's
copies around it. On this host "ms" is the fastest of 15 spread-out rounds (`time_tflite`, which
says why), with the rounds' median and slowest beside it; from benchmark_model, its average.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import hashlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from absl import logging

from cream_tf import RunError, atomic
from cream_tf.arch import HEAD_CHANNELS, LAST_CHANNELS, Arch, BlockSpec, SearchSpace, block_specs

FORMAT = "cream_tf.latency/1"
PRECISIONS = ("float32", "int8")
HOST = "host: "  # `device` of a table measured by this module, followed by the CPU's name
CALIBRATION_SEED = 7  # the calibration networks' draw; benchmarks/latency.py predicts others


class LatencyTableError(RunError):
    """A table that cannot serve the request: the message names the file, what is wrong and what to do."""


def block_key(spec: BlockSpec) -> str | None:
    """The table key of a block's shape; None for an identity block (a skip), which costs nothing."""
    if spec.kind == "skip":
        return None
    return (
        f"{spec.kind}-k{spec.kernel}-s{spec.stride}-d{spec.dilation}-i{spec.in_channels}-o{spec.out_channels}"
        f"-m{spec.mid_channels}-se{spec.se_channels}-{spec.activation}@{spec.in_size}"
    )


@dataclasses.dataclass(frozen=True)
class Head:
    """The classifier head's shape: global pool, 1x1 conv to `HEAD_CHANNELS`, activation, dense."""

    in_size: int
    num_classes: int
    activation: str

    @property
    def key(self) -> str:
        return f"head-i{LAST_CHANNELS}-h{HEAD_CHANNELS}-c{self.num_classes}-{self.activation}@{self.in_size}"


def head_of(arch: Arch) -> Head:
    return Head(block_specs(arch)[-1].out_size, arch.num_classes, arch.ops.fixed_activation)


Piece = BlockSpec | Head | Arch  # what the table times: a block, the head, a calibration network


def piece_key(piece: Piece) -> str:
    if isinstance(piece, Arch):
        return str(piece)
    return piece.key if isinstance(piece, Head) else block_key(piece)


def pieces(arch: Arch) -> dict[str, BlockSpec | Head]:
    """The measured pieces of a network by key, stem to head (skips left out)."""
    return _keyed(block_specs(arch), head_of(arch))


def network_keys(arch: Arch) -> list[str]:
    """The key of every piece a network runs, once per occurrence, stem to head."""
    return [key for key in map(block_key, block_specs(arch)) if key] + [head_of(arch).key]


def pieces_of_space(space: SearchSpace) -> dict[str, BlockSpec | Head]:
    """Every piece any path of `space` can run: the fixed blocks, each allowed candidate at each
    position, the head."""
    specs = [*space.fixed_specs(), *(spec for row in space.choice_specs() for spec in row if spec)]
    return _keyed(specs, head_of(space.template))


def drawn_archs(
    space: SearchSpace, flops_range: tuple[float, float], nets: int = 10, seed: int = CALIBRATION_SEED
) -> dict[str, Arch]:
    """`nets` different paths of `space` drawn as its search draws them (uniform prior,
    `flops_range` in MFLOPs), by their architecture strings; with the default seed, the networks
    that calibrate a table's sum. Fewer in a space with fewer paths (the draws stop after 20 per
    network)."""
    from cream_tf.search.sampler import PathSampler

    sampler, archs = PathSampler(space, flops_range, seed=seed), {}
    for _ in range(20 * nets):
        if len(archs) == nets:
            break
        arch = space.arch(sampler.sample()[0]).replace(dropout=0.0, drop_path=0.0)  # as converted
        archs.setdefault(str(arch), arch)
    return archs


def _keyed(specs: Iterable[BlockSpec], head: Head) -> dict[str, BlockSpec | Head]:
    return {**{key: spec for spec in specs if (key := block_key(spec))}, head.key: head}


def runtime() -> str:
    """The LiteRT this host times with."""
    from importlib.metadata import version

    return f"ai-edge-litert {version('ai-edge-litert')}"


def host_device() -> str:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            name = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{HOST}{name}, {os.cpu_count()} cores"


def default_table_path(threads: int) -> Path:
    """This host's table in the user's cache: one file per CPU, LiteRT version and thread count."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cream_tf" / "latency"
    slug = "".join(c if c.isalnum() else "_" for c in f"{host_device()[len(HOST) :]}_{runtime()}").strip("_")
    return cache / f"{slug}_t{threads}.json"


@dataclasses.dataclass
class LatencyTable:
    """A latency table file's contents (see the module's docstring); `save` writes it atomically."""

    path: Path
    threads: int
    runtime: str
    device: str
    entries: dict[str, dict[str, dict]]
    calibration: dict[str, dict[str, dict]] = dataclasses.field(default_factory=lambda: {p: {} for p in PRECISIONS})

    @classmethod
    def open(cls, path, threads: int, refresh: bool = False) -> LatencyTable:
        """The table at `path`, or a new empty one for this host when there is none.

        A table measured with another thread count, or on this host's kind of device with another
        LiteRT, cannot be extended or compared: LatencyTableError, or with `refresh` an empty
        table in its place (a warning says so; it is measured afresh and replaces the file).
        A file that is not a table is always an error, so that nothing a user wrote is lost.
        """
        path = Path(path)
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an integer >= 1; got {threads!r}.")
        fresh = cls(path, threads, runtime(), host_device(), {p: {} for p in PRECISIONS})
        if not path.exists():
            return fresh
        try:
            data = json.loads(path.read_text())
            if data.get("format") != FORMAT:
                raise ValueError(f"its format is {data.get('format')!r}, not {FORMAT!r}")
            table = cls(path, int(data["threads"]), str(data["runtime"]), str(data["device"]), {})
            for name in ("entries", "calibration"):
                for precision, entries in data.get(name, {}).items():
                    if precision not in PRECISIONS:
                        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
                    getattr(table, name)[precision] = {str(k): {**v, "ms": float(v["ms"])} for k, v in entries.items()}
            for arch in table.calibration["float32"] | table.calibration["int8"]:
                Arch.parse(arch)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise LatencyTableError(
                f"{path} is not a readable latency table ({error}). Give another --latency_table, or move "
                "the file away to measure a new one."
            ) from None
        for precision in PRECISIONS:
            table.entries.setdefault(precision, {})
        problem = None
        if table.threads != threads:
            problem = f"it was measured with {table.threads} thread(s), not the {threads} asked for"
        elif table.device.startswith(HOST) and table.runtime != fresh.runtime:
            problem = f"it was measured with {table.runtime}, and this host runs {fresh.runtime}"
        if problem is None:
            return table
        if not refresh:
            raise LatencyTableError(
                f"The latency table {path} does not fit: {problem}. Give a table measured that way, or have "
                "it measured afresh (--mode=latency --latency_refresh replaces it)."
            )
        logging.warning("Latency table %s: %s; measuring it afresh, replacing the file.", path, problem)
        return fresh

    def save(self) -> None:
        data = {"format": FORMAT, "runtime": self.runtime, "device": self.device, "threads": self.threads}
        data.update(delegate="xnnpack", entries=self.entries, calibration=self.calibration)
        atomic.write_json(self.path, data)

    def section(self, piece: Piece, precision: str) -> dict[str, dict]:
        """Where `piece`'s figure goes: the calibration networks' or the blocks' entries."""
        return (self.calibration if isinstance(piece, Arch) else self.entries)[_checked(precision)]

    def calibration_ratios(self, precision: str, input_size: int) -> list[float]:
        """Measured over summed latency of each calibration network at `input_size`."""
        archs = [(Arch.parse(key), stats["ms"]) for key, stats in self.calibration[_checked(precision)].items()]
        return [ms / math.fsum(self.ms(network_keys(a), precision)) for a, ms in archs if a.input_size == input_size]

    def scale(self, precision: str, input_size: int) -> float:
        """The calibration scale at `input_size`: the median ratio; 1 where no network calibrates."""
        ratios = self.calibration_ratios(precision, input_size)
        return statistics.median(ratios) if ratios else 1.0

    def ms(self, keys: Iterable[str], precision: str) -> list[float]:
        """Each key's latency; LatencyTableError naming the keys the table lacks."""
        entries = self.entries[_checked(precision)]
        keys = list(keys)
        missing = sorted({key for key in keys if key not in entries})
        if missing:
            raise LatencyTableError(
                f"The latency table {self.path} has no {precision} entry for {len(missing)} block(s) this "
                f"network runs: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}. Measure them on "
                "this host (--mode=latency measures what is missing), or on the device the table came from."
            )
        return [entries[key]["ms"] for key in keys]


def _checked(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}.")
    return precision


def predict_ms(arch: Arch, table: LatencyTable, precision: str) -> float:
    """The network's latency: the sum of its pieces' table entries times the table's calibration
    scale at the network's input size."""
    return table.scale(precision, arch.input_size) * math.fsum(table.ms(network_keys(arch), precision))


def measure_missing(
    table: LatencyTable,
    wanted: dict[str, Piece],
    precisions: Iterable[str],
    passes: int = 1,
    keep: Path | None = None,
    **timing,
) -> int:
    """Measures the `wanted` pieces (blocks, heads, calibration networks) the table lacks, saving
    after each (a stopped run resumes where it stopped); returns how many timings it made.
    `passes` > 1 times every piece again in later passes over all of them, keeping its fastest
    figure: a machine whose speed drifts over minutes gets several chances to be timed at its own
    pace. `keep`: a folder where the converted pieces stay, so that later passes time the same
    files without converting again. `timing`: `time_tflite`'s settings."""
    if not table.device.startswith(HOST):
        raise LatencyTableError(
            f"The latency table {table.path} was measured on {table.device}; this host cannot add entries to "
            "it. Measure the missing blocks there (scripts/latency_adb.sh), or use a table of this host."
        )
    done, start = 0, time.perf_counter()
    for number in range(1, passes + 1):
        todo = [
            (precision, key)
            for precision in map(_checked, precisions)
            for key, piece in wanted.items()
            if table.section(piece, precision).get(key, {}).get("passes", 0) < number
        ]
        for count, (precision, key) in enumerate(todo, start=1):
            entries = table.section(wanted[key], precision)
            stats = time_tflite(converted(wanted[key], precision, keep), table.threads, **timing)
            before = entries.get(key)
            if before and before["ms"] < stats["ms"]:
                stats = before
            entries[key] = {**stats, "passes": number}
            table.save()
            done += 1
            logging.info(
                "Latency table %s, pass %d: %d/%d timed (%s %s: %.4f ms), %.0f s so far.",
                table.path.name,
                number,
                count,
                len(todo),
                precision,
                key,
                stats["ms"],
                time.perf_counter() - start,
            )
    return done


def converted(piece: Piece, precision: str, keep: Path | None) -> bytes:
    """The piece's TFLite file: read from `keep` when it is there, else converted (and written
    there, named by its key; a network's, whose string can be long, by the key's hash)."""
    key = piece_key(piece)
    name = f"net_{hashlib.sha1(key.encode()).hexdigest()[:16]}" if isinstance(piece, Arch) else key
    file = keep and Path(keep) / f"{precision}_{''.join(c if c.isalnum() else '_' for c in name)}.tflite"
    if file and file.is_file():
        return file.read_bytes()
    content = tflite_bytes(piece_model(piece), precision)
    if file:
        file.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(file, content)
    return content


def piece_model(piece: Piece):
    """A Keras model of one piece alone (a network: whole), fresh weights, batch 1."""
    import keras

    from cream_tf.blocks import KERAS, apply_block, apply_head, block_layers, head_layers
    from cream_tf.childnet import build_child

    if isinstance(piece, Arch):
        return build_child(piece)
    if isinstance(piece, Head):
        inputs = keras.Input((piece.in_size, piece.in_size, LAST_CHANNELS), batch_size=1)
        outputs = apply_head(head_layers(piece.num_classes, HEAD_CHANNELS, 0.0, KERAS, piece.activation), inputs)
    else:
        inputs = keras.Input((piece.in_size, piece.in_size, piece.in_channels), batch_size=1)
        outputs = apply_block(block_layers(piece, KERAS), inputs)
    return keras.Model(inputs, outputs)


def tflite_bytes(model, precision: str) -> bytes:
    """`model` converted as cream_tf.export converts a network: through a SavedModel, float32 or
    full-integer int8 (calibrated on seeded Gaussian inputs: the ranges change no op or shape)."""
    import numpy as np

    from cream_tf import export

    with tempfile.TemporaryDirectory(prefix="cream-latency-") as folder:
        model.export(folder, format="tf_saved_model", verbose=False)
        if _checked(precision) == "float32":
            return export.to_tflite_float(Path(folder))
        shape = (8, *model.input_shape[1:])
        return export.to_tflite_int8(Path(folder), np.random.default_rng(0).normal(size=shape).astype("float32"))


def measure_network(arch: Arch, precision: str, threads: int, times: int = 1, **timing) -> dict:
    """The whole network's latency, converted and timed as the table's pieces are: converted
    once, the fastest of `times` timings (as passes keep the table's fastest figures)."""
    content = converted(arch, precision, None)
    return min((time_tflite(content, threads, **timing) for _ in range(times)), key=lambda stats: stats["ms"])


def time_tflite(
    content: bytes, threads: int, rounds: int = 15, round_seconds: float = 0.02, gap_seconds: float = 0.08
) -> dict:
    """Latency of one `invoke()` of a TFLite model in LiteRT (XNNPACK, `threads` threads), input set
    once before: {"ms": the fastest round's mean, "median_ms", "max_ms", "rounds", "calls" per round}.

    A round makes as many calls as fill `round_seconds`, after a warm-up; rounds are `gap_seconds`
    apart, so that they spread over more than a second. On a shared machine (a cloud VM, a phone
    with background work) other work only ever slows calls down, in stretches that can last a
    second: the fastest round of a spread-out set is the figure that repeats, and the table and
    the whole networks it predicts are timed alike. The calls run in a process of their own that
    holds LiteRT alone (started once, `_Timer`), once this one has settled (`_settle`)."""
    return _timer().time(content, threads, rounds, round_seconds, gap_seconds)


def _time_here(content: bytes, threads: int, rounds: int, round_seconds: float, gap_seconds: float) -> dict:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    clock = time.perf_counter
    interpreter = Interpreter(model_content=content, num_threads=threads)
    interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    start, calls = clock(), 0
    while calls < 3 or clock() - start < round_seconds:
        interpreter.invoke()
        calls += 1
    per_call = (clock() - start) / calls
    calls = max(1, round(round_seconds / per_call))
    means = []
    for _ in range(rounds):
        time.sleep(gap_seconds)
        start = clock()
        for _ in range(calls):
            interpreter.invoke()
        means.append((clock() - start) / calls * 1e3)
    spread = {"median_ms": statistics.median(means), "max_ms": max(means)}
    return {"ms": min(means), **spread, "rounds": rounds, "calls": calls}


class _Timer:
    """A child process (`python -m cream_tf.latency timer`) that times the models it is sent: a
    JSON line with the settings and the model's size, the model's bytes; it answers a JSON line."""

    def __init__(self):
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        command = [sys.executable, "-m", "cream_tf.latency", "timer"]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)

    def time(self, content: bytes, threads: int, rounds: int, round_seconds: float, gap_seconds: float) -> dict:
        _settle()
        request = {"threads": threads, "rounds": rounds, "round_seconds": round_seconds, "gap_seconds": gap_seconds}
        request["size"] = len(content)
        self.process.stdin.write(json.dumps(request).encode() + b"\n" + content)
        self.process.stdin.flush()
        reply = json.loads(self.process.stdout.readline() or '{"error": "the timing process ended"}')
        if "error" in reply:
            raise RuntimeError(f"Timing a TFLite model failed: {reply['error']}")
        return reply


def _settle(window: float = 0.1, busy: float = 0.05, limit: float = 1.0) -> None:
    """Waits, at most `limit` seconds, until this process's threads use under `busy` of a core over
    `window`: after a conversion TensorFlow's threads go on working for a second or so, and the
    timed calls, though in another process, ran up to 60% slower beside them."""
    gc.collect()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = time.process_time()
        time.sleep(window)
        if time.process_time() - before < busy * window:
            return


@functools.cache
def _timer() -> _Timer:
    return _Timer()


def _serve_timer() -> None:
    """The timing process's loop (see `_Timer`); it ends when its input does."""
    given, answer = sys.stdin.buffer, sys.stdout.buffer
    for line in iter(given.readline, b""):
        request = json.loads(line)
        content = given.read(request.pop("size"))
        try:
            reply = _time_here(content, **request)
        except Exception as error:  # reported to the parent, which raises it
            reply = {"error": f"{type(error).__name__}: {error}"}
        answer.write(json.dumps(reply).encode() + b"\n")
        answer.flush()


class PathLatency:
    """Predicted latency of every path of a search space by table look-up, as flops.FlopsTable
    gives their multiply-adds: the fixed pieces' sum plus one entry per position (0 for a skip),
    times the table's calibration scale (`predict_ms`)."""

    def __init__(self, space: SearchSpace, table: LatencyTable, precision: str):
        self.table, self.precision = table, precision
        self.scale = table.scale(precision, space.template.input_size)
        rows = space.choice_specs()
        self.entries = [[self._ms(spec) if spec else None for spec in row] for row in rows]
        fixed = [block_key(spec) for spec in space.fixed_specs()] + [head_of(space.template).key]
        self.fixed = math.fsum(table.ms(fixed, precision))

    def _ms(self, spec: BlockSpec) -> float:
        key = block_key(spec)
        return self.table.ms([key], self.precision)[0] if key else 0.0

    def ms(self, flat_path) -> float:
        return self.scale * (self.fixed + math.fsum(row[int(c)] for row, c in zip(self.entries, flat_path)))

    def range(self) -> tuple[float, float]:
        allowed = [[ms for ms in row if ms is not None] for row in self.entries]
        return tuple(self.scale * (self.fixed + sum(map(pick, allowed))) for pick in (min, max))


def for_search(
    space: SearchSpace,
    table_file: str,
    precision: str,
    threads: int,
    flops_range: tuple[float, float],
    calibration: int = 10,
) -> PathLatency:
    """The predictor a latency-bounded search samples with: the table at `table_file` (this host's
    default when empty), its missing pieces and `calibration` calibration networks (drawn in
    `flops_range`, MFLOPs) measured first. Processes of one machine that start together measure
    one after another under a lock, so the later ones read what the first wrote."""
    import fcntl

    path = Path(table_file) if table_file else default_table_path(threads)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)  # the lock: the table's folder, so no lock file is left
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        table = LatencyTable.open(path, threads)
        wanted = pieces_of_space(space) | drawn_archs(space, flops_range, calibration)
        if any(key not in table.section(piece, precision) for key, piece in wanted.items()):
            if table.device.startswith(HOST):
                logging.info("Latency table %s: measuring the blocks of this space it lacks (%s).", path, precision)
            measure_missing(table, wanted, (precision,))
    finally:
        os.close(folder)  # which releases the lock
    return PathLatency(space, table, precision)


# --- tables measured elsewhere (scripts/latency_adb.sh) ------------------------------------------


def write_pieces(space: SearchSpace, folder, precisions: Iterable[str], calibration: dict[str, Arch]) -> Path:
    """Every piece of `space` and the `calibration` networks as TFLite files under `folder`, with
    `manifest.json` (one line per file: precision, key, file name, whether it is a network), for a
    device to time; returns the manifest's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest, wanted = [], pieces_of_space(space) | calibration
    for precision in map(_checked, precisions):
        for number, (key, piece) in enumerate(wanted.items()):
            name = f"{precision}_{number:03d}.tflite"
            atomic.write_bytes(folder / name, tflite_bytes(piece_model(piece), precision))
            manifest.append({"precision": precision, "key": key, "file": name, "network": isinstance(piece, Arch)})
    atomic.write_json(folder / "manifest.json", manifest)
    return folder / "manifest.json"


def table_from_timings(manifest, timings, path, threads: int, device: str, runtime_name: str) -> LatencyTable:
    """A table from a device's timings: `timings` has one line per timed file, `FILE AVG_US STD_US
    RUNS` (LiteRT's benchmark_model reports microseconds); the manifest names each file's piece."""
    by_file = {item["file"]: item for item in json.loads(Path(manifest).read_text())}
    table = LatencyTable(Path(path), threads, runtime_name, device, {p: {} for p in PRECISIONS})
    for number, line in enumerate(Path(timings).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            file, average, spread, runs = line.split()
            item = by_file[file]
            ms, sd = float(average) / 1e3, float(spread) / 1e3
        except (ValueError, KeyError):
            raise ValueError(
                f"{timings} line {number} {line!r} is not 'FILE AVG_US STD_US RUNS' for a file of {manifest}."
            ) from None
        entry = {"ms": ms, "sd_ms": sd, "runs": int(runs)}
        (table.calibration if item.get("network") else table.entries)[item["precision"]][item["key"]] = entry
    table.save()
    return table


def main(argv=None) -> None:
    """`python -m cream_tf.latency pieces|table ...`: the host's half of a device's table."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m cream_tf.latency", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("timer", help="(internal) the timing process time_tflite talks to")
    pieces_command = commands.add_parser("pieces", help="every block of a search config's space as TFLite files")
    pieces_command.add_argument("--config_file", required=True, help="a search config (its data and space)")
    pieces_command.add_argument("--params_override", default="")
    pieces_command.add_argument("--out", required=True)
    pieces_command.add_argument("--precisions", default="float32,int8")
    table_command = commands.add_parser("table", help="a table from the device's timings of those files")
    for flag in ("--manifest", "--timings", "--out", "--device", "--runtime"):
        table_command.add_argument(flag, required=True)
    table_command.add_argument("--threads", type=int, required=True)
    args = parser.parse_args(argv)
    if args.command == "timer":
        _serve_timer()
    elif args.command == "pieces":
        from cream_tf import config as config_lib
        from cream_tf.flops import build_space

        config = config_lib.load(config_lib.SearchConfig, args.config_file, args.params_override)
        space, s = build_space(config), config.space
        calibration = drawn_archs(space, (s.flops_min, s.flops_max), s.latency_calibration)
        print(write_pieces(space, args.out, args.precisions.split(","), calibration))
    else:
        table = table_from_timings(args.manifest, args.timings, args.out, args.threads, args.device, args.runtime)
        print(f"{table.path}: " + ", ".join(f"{len(v)} {p} entries" for p, v in table.entries.items()))


if __name__ == "__main__":
    main()
