"""`main.py --local_workers=N`: one process per accelerator on this machine, training together.

MirroredStrategy traces the train step once per replica in one process, so tracing time and
host memory grow with the GPUs (benchmarks/trace_scaling.py). As torch.distributed does, this
runs one process per GPU instead, each a worker of MultiWorkerMirroredStrategy over localhost
that sees only its own GPU, so every process traces one replica's graph, and they trace at once.
It imports no TensorFlow: the launching process stays small and leaves the GPUs to its workers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def local_accelerators() -> list[str]:
    """The GPUs a process here may use, as CUDA_VISIBLE_DEVICES names them (read without
    starting TensorFlow's GPU runtime): that variable's list when set, else one per GPU the
    NVIDIA driver lists; empty on a machine without one."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    driver = Path("/proc/driver/nvidia/gpus")
    return [str(i) for i in range(len(list(driver.iterdir())))] if driver.is_dir() else []


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def without_flag(argv: list[str], name: str) -> list[str]:
    """`argv` less absl flag `name`, given as --name=V, --name V, -name=V or -name V."""
    kept, skip = [], False
    for arg in argv:
        flag = arg.startswith("-") and arg.lstrip("-").split("=")[0] == name
        if not (flag or skip):
            kept.append(arg)
        skip = flag and "=" not in arg
    return kept


def launch(argv: list[str], workers: int, log_dir: Path) -> int:
    """Runs `python argv...` as `workers` processes on this machine that train together
    (MultiWorkerMirroredStrategy over localhost, as torch.distributed runs one process per
    GPU): worker i sees only accelerator i, so each process traces one replica's graph.

    Worker 0 is the chief: it writes the results and its output is this console's; the others
    write theirs to log_dir/worker_I.log. SIGTERM and SIGINT are passed on to every worker. When
    one worker fails the others are stopped. Returns the first non-zero exit status, else 0.
    """
    accelerators = local_accelerators()
    if workers < 1 or (accelerators and workers > len(accelerators)):
        raise ValueError(
            f"--local_workers={workers}, but this machine has {len(accelerators)} visible GPU(s) "
            f"({', '.join(accelerators) or 'none'}); valid are 1 to {max(1, len(accelerators))} here "
            "(without a GPU any count runs on the CPU, for tests)."
        )
    if os.environ.get("TF_CONFIG"):
        raise ValueError("--local_workers starts its own cluster; unset TF_CONFIG (it names one already).")
    log_dir.mkdir(parents=True, exist_ok=True)
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(workers)]}
    processes, logs = [], []
    for i in range(workers):
        env = dict(os.environ)
        env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        env["CUDA_VISIBLE_DEVICES"] = accelerators[i] if accelerators else ""
        out = None
        if i:
            out = open(log_dir / f"worker_{i}.log", "w")  # noqa: SIM115 (closed below)
            logs.append(out)
        processes.append(subprocess.Popen([sys.executable, *argv], env=env, stdout=out, stderr=out))
    print(
        f"Started {workers} workers (pids {', '.join(str(p.pid) for p in processes)}); worker 0 reports here, "
        f"the others in {log_dir}/worker_I.log.",
        flush=True,
    )

    def forward(signum, frame):
        for process in processes:
            if process.poll() is None:
                process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    status = 0
    try:
        while [p.poll() for p in processes].count(None):  # polls every process (any() would stop early)
            failed = [p.returncode for p in processes if p.returncode not in (None, 0)]
            if failed and not status:
                status = failed[0]
                print(f"A worker exited with status {status}; stopping the others.", file=sys.stderr, flush=True)
                forward(signal.SIGTERM, None)
            time.sleep(0.2)
        status = status or next((p.returncode for p in processes if p.returncode), 0)
        return 128 - status if status < 0 else status  # killed by signal N: 128 + N, as a shell says
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for out in logs:
            out.close()
