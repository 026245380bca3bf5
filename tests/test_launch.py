"""`main.py --local_workers=N`: the launcher's command line, its errors and how it ends; and the
lines a finished search ends with. (Two real workers training together: tests/test_search.py.)"""

import os
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest

from cream_tf import commands, launch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_each_worker_runs_the_command_without_the_launch_flag():
    argv = ["main.py", "--mode=search", "--local_workers=4", "--model_dir=x", "-local_workers", "4", "--verbose"]
    assert launch.without_flag(argv, "local_workers") == ["main.py", "--mode=search", "--model_dir=x", "--verbose"]
    assert launch.without_flag(["a", "--local_workers_x=1"], "local_workers") == ["a", "--local_workers_x=1"]


def test_accelerators_come_from_cuda_visible_devices():
    with mock.patch.dict(os.environ, {"CUDA_VISIBLE_DEVICES": "2,5"}):
        assert launch.local_accelerators() == ["2", "5"]
        with pytest.raises(ValueError, match=r"--local_workers=3, but this machine has 2 visible GPU\(s\) \(2, 5\)"):
            launch.launch(["-c", "pass"], 3, "unused")
    with mock.patch.dict(os.environ, {"CUDA_VISIBLE_DEVICES": "", "TF_CONFIG": "{}"}):
        assert launch.local_accelerators() == []
        with pytest.raises(ValueError, match="unset TF_CONFIG"):
            launch.launch(["-c", "pass"], 2, "unused")


def test_a_failing_worker_stops_the_others_and_gives_its_status(tmp_path, capfd):
    # Worker 0 would wait a minute; worker 1 fails at once. Each sees its own cluster entry.
    script = (
        "import json, os, sys, time\n"
        "config = json.loads(os.environ['TF_CONFIG'])\n"
        "assert len(config['cluster']['worker']) == 2 and os.environ['CUDA_VISIBLE_DEVICES'] == ''\n"
        "print('worker', config['task']['index'], flush=True)\n"
        "time.sleep(60) if config['task']['index'] == 0 else sys.exit(3)\n"
    )
    began = time.time()
    with mock.patch.dict(os.environ, {"CUDA_VISIBLE_DEVICES": ""}):
        assert launch.launch(["-c", script], 2, tmp_path / "logs") == 3
    assert time.time() - began < 30  # worker 0 was stopped, not waited for
    assert "worker 1" in (tmp_path / "logs" / "worker_1.log").read_text()
    out, err = capfd.readouterr()
    assert "worker 0" in out and "A worker exited with status 3; stopping the others." in err


def test_a_finished_search_names_its_results_and_the_next_command():
    winner = {"arch": "[3][3]@28", "mflops": 11.5, "val_top1": 90.1, "test_top1": 89.7, "entry": "zoo/board_03"}
    lines = commands.search_summary(winner, "runs/s").splitlines()
    assert lines[0] == (
        "selected [3][3]@28: 11.5 MFLOPs, held-out top-1 90.1%, test top-1 89.7%; zoo entry runs/s/zoo/board_03"
    )
    assert "runs/s/search_result.json" in lines[1] and "runs/s/search_plot.png" in lines[1]
    assert lines[-1].split() == [
        "cream-tf",
        "--mode=retrain",
        "--search_result=runs/s/search_result.json",
        "--weights=runs/s/zoo/board_03",
        "--model_dir=runs/retrain",
    ]
    assert "--weights" not in commands.search_summary({**winner, "entry": None}, "runs/s")


def test_the_installed_command_is_the_command_line():
    """setup.py's console script `cream-tf` (installed beside this Python by scripts/setup.sh)."""
    script = Path(sys.executable).parent / "cream-tf"
    shown = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert "--mode: <search|describe|export|convert|retrain|eval|config|qat|latency>" in shown.stdout, shown.stdout[
        :2000
    ]
    bad = subprocess.run([str(script), "--mode=describe"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1, bad.stderr
    assert bad.stderr.splitlines()[-1].startswith("Error: Give exactly one of --zoo"), bad.stderr
