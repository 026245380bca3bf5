"""Crashes, divergence, a second run on the same folder and a changed config: each ends in a
state a rerun can continue from, or in one clear error before anything is written."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf
import test_search
from test_search import REPO, _final_state, assert_same_state

from cream_tf import RunError, atomic, folders, run_guard

HERE = Path(__file__).resolve().parent
# test_search's tiny search with two candidates per position (the paper space has six): resuming,
# refusing and stopping do not depend on how many a position has, and every search here traces its
# step, most of its time, over a third of the blocks.
TINY = test_search.TINY.replace(
    "stem_channels: 8}", "stem_channels: 8, candidates: [{kernel: 3}, {kernel: 5, expansion: 6}]}"
).replace("cream: {", "cream: {prior: [], ")
assert TINY.count("candidates") == 1 and TINY.count("prior") == 1


def _tiny(tmp_path, override=""):
    return test_search._tiny(tmp_path, override, TINY)


def _worker(config, model_dir, fault):
    return subprocess.run(
        [sys.executable, str(HERE / "fault_worker.py"), str(config), str(model_dir), fault],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


# Its processes take 4-8 GB: never beside the other tests that start such processes (conftest).
@pytest.mark.xdist_group("big_processes")
def test_a_search_killed_anywhere_resumes_to_the_same_end(tmp_path):
    """Real processes, one search interrupted twice: ended by SIGTERM mid-epoch, its own checkpoint
    then torn (its index cut short, as a crash mid-write leaves it); resumed in a new process from
    the epoch's end before it, and that one ended by SIGKILL mid-epoch after a step checkpoint;
    resumed from that in a third, it ends with the board and weights of a run never interrupted.
    Each resume trains on from where it started, so either one not exact shows in that end."""
    config = tmp_path / "tiny.yaml"
    tiny = TINY.replace("deterministic: true}", "deterministic: true, checkpoint_every_steps: 4}")
    config.write_text(tiny.replace("selection: {", "selection: {export: false, "))
    whole = _worker(config, tmp_path / "whole", "none")
    assert whole.returncode == 0, whole.stderr[-3000:]
    board = json.loads((tmp_path / "whole" / "done.json").read_text())
    model_dir = tmp_path / "run"
    lock = model_dir / folders.LOCK_FILE
    resumed_from = rf"Resumed from {re.escape(str(model_dir))}/checkpoints/ckpt-\d+: "

    # SIGTERM in step 2 of epoch 2: the step ends, a checkpoint is written, exit 143, lock released.
    ended = _worker(config, model_dir, "sigterm")
    assert ended.returncode == 128 + signal.SIGTERM, ended.stderr[-3000:]
    assert "Error: Stopped by SIGTERM in epoch 2 after step 2" in ended.stderr, ended.stderr[-3000:]
    assert not (model_dir / "done.json").exists() and not lock.exists()
    newest = max((model_dir / "checkpoints").glob("ckpt-*.index"), key=lambda p: int(p.stem.split("-")[1]))
    state = tf.train.load_checkpoint(str(newest.with_suffix("")))
    host = [name for name in state.get_variable_to_shape_map() if name.startswith("host_state/")]
    saved = json.loads(state.get_tensor(host[0]))
    assert (saved["epoch"], saved["batch"]) == (1, 2)  # resumable at step 2 of epoch 2
    newest.write_bytes(newest.read_bytes()[:40])

    # Resumed from the epoch's end before the torn checkpoint, then SIGKILL in step 4 of epoch 2,
    # after the step checkpoint at global step 8: the lock stays behind.
    killed = _worker(config, model_dir, "kill")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert "is not usable" in killed.stderr, killed.stderr[-3000:]
    assert re.search(resumed_from + "epoch 1, step 5", killed.stderr), killed.stderr[-3000:]
    assert "Taking over the lock" not in killed.stderr, killed.stderr[-3000:]
    assert not (model_dir / "done.json").exists() and lock.exists()

    # Resumed from that step checkpoint, taking over the lock: the end of the run never interrupted.
    resumed = _worker(config, model_dir, "none")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert re.search(resumed_from + "epoch 2, step 3", resumed.stderr), resumed.stderr[-3000:]
    assert "Taking over the lock" in resumed.stderr and "is not usable" not in resumed.stderr, resumed.stderr[-3000:]
    assert json.loads((model_dir / "done.json").read_text()) == board
    assert_same_state(_final_state(model_dir), _final_state(tmp_path / "whole"))


def test_a_changed_config_is_refused_and_no_usable_checkpoint_is_one_clear_error(tmp_path):
    """One tiny search, stopped after its first epoch: resuming it with changed training settings
    is refused naming the keys, with a changed reporting one it finishes; its checkpoints then
    damaged, a resume is one error naming each."""
    from cream_tf.search.run import SearchRun

    run_dir = tmp_path / "run"
    first = SearchRun(_tiny(tmp_path, "selection.export=false"), run_dir, strategy=tf.distribute.get_strategy())
    assert first.run(stop_at_epoch=1) is None  # as a run killed right after that epoch's checkpoint
    assert not (run_dir / "search_result.json").exists()
    recorded = (run_dir / "config.yaml").read_text()
    changed = SearchRun(_tiny(tmp_path, "data.batch_size=16,cream.board_size=3"), run_dir)
    with pytest.raises(RunError, match=r"cream.board_size=2 there, 3 now, data.batch_size=32 there, 16 now"):
        changed.run()
    assert (run_dir / "config.yaml").read_text() == recorded
    assert not (run_dir / folders.LOCK_FILE).exists()
    # Selection settings only change what is reported: the run resumes and finishes.
    finished = SearchRun(_tiny(tmp_path, "selection.export=false,selection.eval_batches=1"), run_dir)
    assert finished.run()["winner"] is not None

    for data in (run_dir / "checkpoints").glob("ckpt-*.data*"):
        data.write_bytes(data.read_bytes()[:100])
    again = SearchRun(_tiny(tmp_path, "selection.export=false"), run_dir, strategy=tf.distribute.get_strategy())
    with pytest.raises(RunError, match=r"No usable checkpoint in .*ckpt-2: .*; ckpt-1: "):
        again.restore()


def test_one_run_per_folder(tmp_path):
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    lock = model_dir / folders.LOCK_FILE
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "today"}))
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    second = subprocess.run(
        [sys.executable, str(REPO / "main.py"), "--mode=search", f"--config_file={config}", f"--model_dir={model_dir}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert second.returncode != 0
    assert f"Error: {model_dir} is in use by pid {os.getpid()}" in second.stderr, second.stderr[-2000:]
    assert sorted(p.name for p in model_dir.iterdir()) == [folders.LOCK_FILE]
    # A lock left by a process that has ended is taken over.
    ended = subprocess.Popen(["true"])
    ended.wait()
    lock.write_text(json.dumps({"pid": ended.pid, "host": socket.gethostname(), "since": "yesterday"}))
    with run_guard.folder_lock(model_dir):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_divergence_stops_the_search_and_exports_nothing(tmp_path):
    from cream_tf.search.run import SearchRun

    run = SearchRun(_tiny(tmp_path, "train.lr=1e4"), tmp_path / "run", strategy=tf.distribute.get_strategy())
    with pytest.raises(RunError, match=r"Training diverged in epoch 1, step \d+: loss is nan .*train.lr=10000.0"):
        run.run()
    assert len(run.board) == 0
    assert not (tmp_path / "run" / "search_result.json").exists() and not (tmp_path / "run" / "zoo").exists()
    assert not list((tmp_path / "run").glob("checkpoints/ckpt-*"))


def test_json_never_holds_nan(tmp_path):
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        atomic.write_json(tmp_path / "x.json", {"loss": float("nan")})
    assert not (tmp_path / "x.json").exists() and not list(tmp_path.iterdir())


def test_bad_input_is_one_error_naming_the_value_before_anything_is_written(tmp_path):
    from cream_tf import config as config_lib
    from cream_tf.config import RetrainConfig, SearchConfig
    from cream_tf.search.run import SearchRun

    broken = tmp_path / "broken.yaml"
    broken.write_text("train:\n  epochs: 3\n  lr: [0.1,\n")
    with pytest.raises(ValueError, match=r"Config file .*broken.yaml' is not valid YAML at line 4, column 1: "):
        config_lib.load(SearchConfig, str(broken))
    with pytest.raises(ValueError, match=r"--params_override train.lr is not valid YAML at line 1, column 6"):
        config_lib.load(SearchConfig, None, "train.lr=[0.1,")
    assert config_lib.load(SearchConfig, None, "train.lr=1e4").train.lr == 10000.0
    for cls, override, message in [
        (SearchConfig, "data.batch_size=0", "data.batch_size=0 is not valid; valid: an integer >= 1"),
        (RetrainConfig, "data.batch_size=0", "data.batch_size=0 is not valid; valid: an integer >= 1"),
        (SearchConfig, "train.steps_per_epoch=-5", "train.steps_per_epoch=-5 is not valid"),
        (RetrainConfig, "train.steps_per_epoch=-5", "train.steps_per_epoch=-5 is not valid"),
        (SearchConfig, "train.checkpoint_every_steps=-1", "train.checkpoint_every_steps=-1 is not valid"),
    ]:
        with pytest.raises(ValueError, match=message):
            config_lib.load(cls, None, override).validate()
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(ValueError, match=f"model_dir '{a_file}/run' cannot be a folder: '{a_file}' is a file"):
        SearchRun(_tiny(tmp_path), a_file / "run", strategy=tf.distribute.get_strategy())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "broken.yaml", "tiny.yaml"]


class _Run:
    """What the signal handler reads of a run."""

    def __init__(self, steps_since_save):
        self.stop_signal, self.steps_since_save, self.model_dir = 0, steps_since_save, Path("runs/x")


def test_a_signal_with_nothing_to_save_or_a_second_one_stops_at_once():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    nothing_done = run_guard.stop_on_signals(_Run(0), workers=1)
    with nothing_done, pytest.raises(run_guard.StoppedAtOnce, match="before any step since the last") as stopped:
        os.kill(os.getpid(), signal.SIGINT)
    assert stopped.value.exit_code == 130
    run = _Run(3)
    with run_guard.stop_on_signals(run, workers=1):
        os.kill(os.getpid(), signal.SIGTERM)  # steps to save: the run finishes its step first
        assert run.stop_signal == signal.SIGTERM
        with pytest.raises(run_guard.StoppedAtOnce, match="second SIGINT") as stopped:
            os.kill(os.getpid(), signal.SIGINT)
    assert stopped.value.exit_code == 130
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # handlers put back


def test_ctrl_c_while_the_first_step_is_built_ends_at_once_in_one_line(tmp_path):
    """As a user presses Ctrl-C while the graph is built: nothing trained yet, so the run ends at
    once (exit 130) with one line, no traceback, and its folder unlocked."""
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    model_dir = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, str(REPO / "main.py"), "--mode=search", f"--config_file={config}", f"--model_dir={model_dir}"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    for line in process.stderr:
        lines.append(line)
        if "Building the train step's graph" in line:
            process.send_signal(signal.SIGINT)
            break
    rest = process.stderr.read()
    assert process.wait(timeout=60) == 130, "".join(lines) + rest
    assert "Traceback" not in rest, rest
    assert rest.strip().splitlines()[-1].startswith("Error: Stopped by SIGINT before any step"), rest
    assert not (model_dir / folders.LOCK_FILE).exists()
    assert not list((model_dir / folders.CHECKPOINTS).glob("ckpt-*.index"))
