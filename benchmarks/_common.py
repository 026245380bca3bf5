"""What the benchmark scripts share: the machine they ran on, paired timing, Markdown tables.

Imported by the scripts beside it (`python benchmarks/x.py` puts this folder on sys.path). It
imports no framework itself, so a script can import torch before TensorFlow (timm's torchvision
crashes when imported after TensorFlow; see tests/conftest.py).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence

# Smoke runs search a space of two candidates per position (the paper space has six): a smoke run
# shows that a script works, and each of its searches traces a step over a third of the blocks.
SMOKE_CANDIDATES = "space.candidates=[{kernel: 3}, {kernel: 5, expansion: 6}],cream.prior=[]"


def lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return {}
    return {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in out.splitlines()) if value}


def cpu_model() -> str:
    return lscpu().get("Model name") or platform.processor() or "unknown CPU"


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine(packages: Iterable[str] = ("tensorflow", "keras")) -> str:
    """CPU model, core count, GPUs (when TensorFlow is loaded) and the versions of `packages`."""
    gpus = ""
    if "tensorflow" in sys.modules:
        gpus = f", {len(sys.modules['tensorflow'].config.list_physical_devices('GPU'))} GPU(s)"
    versions = ", ".join(f"{name} {version(name)}" for name in packages)
    return f"{cpu_model()}, {os.cpu_count()} cores{gpus}; {versions}, Python {platform.python_version()}"


def use_cores(threads: int) -> None:
    """Pins this process to its first `threads` CPUs, so that no framework's spare pool threads
    (TensorFlow's inter-op pool, ONNX Runtime's spinning workers) reach beyond that many cores."""
    available = sorted(os.sched_getaffinity(0))
    if threads > len(available):
        raise ValueError(f"--threads {threads} exceeds the {len(available)} CPUs this process may use.")
    os.sched_setaffinity(0, available[:threads])


def alternate(sides: dict[str, Callable[[], object]], rounds: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each side, one figure per round.

    Each round calls every side `repeats` times in turn (the order reversed every other round),
    so a change of machine load hits all sides alike. Each call must return only when its work
    is done (fetch a loss or an output).
    """
    names = list(sides)
    times = {name: [] for name in names}
    for index in range(rounds):
        for name in names if index % 2 == 0 else reversed(names):
            start = time.perf_counter()
            for _ in range(repeats):
                sides[name]()
            times[name].append((time.perf_counter() - start) / repeats)
    return times


def speedup(times: dict[str, list[float]], side: str, baseline: str) -> float:
    """How many times faster `side` is than `baseline`: the median over rounds of the paired
    ratio baseline time / side time (pairs from the same round saw the same load)."""
    return statistics.median(b / s for b, s in zip(times[baseline], times[side]))


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
