"""What keeps a run's folder and process safe: one run per `model_dir` (a lock file naming its
owner), and stopping on SIGTERM or Ctrl-C with a checkpoint, or at once when there is nothing
to save. Writes that are whole or absent are cream_tf.atomic's."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

from absl import logging

from cream_tf import RunError
from cream_tf.folders import LOCK_FILE


@contextlib.contextmanager
def folder_lock(model_dir: Path):
    """One run per folder: `model_dir/.lock` holds the owner's pid and host, created exclusively
    before anything else is written there. A lock whose process is gone (same host) is taken
    over with a warning; one held by a live process, or from another host, is a RunError."""
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = json.loads(path.read_text())
            except (OSError, ValueError):
                owner = {}
            if owner.get("host") == me["host"] and isinstance(owner.get("pid"), int) and not _alive(owner["pid"]):
                logging.warning("Taking over the lock of %s from pid %d, which has ended.", model_dir, owner["pid"])
                path.unlink(missing_ok=True)
                continue
            raise RunError(
                f"{model_dir} is in use by pid {owner.get('pid', '?')} on {owner.get('host', '?')} since "
                f"{owner.get('since', '?')}. Wait for that run, use another --model_dir, or delete "
                f"{path} if that run is gone."
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Interrupted(RunError):
    """SIGTERM or SIGINT: the step finished, a checkpoint was written, the run ends with 128 + signal."""

    def __init__(self, signum: int, epoch: int, step: int, checkpoints: Path):
        super().__init__(
            f"Stopped by {signal.Signals(signum).name} in epoch {epoch} after step {step}; a checkpoint is in "
            f"{checkpoints}. Run the same command again to resume there."
        )
        self.exit_code = 128 + signum


class StoppedAtOnce(KeyboardInterrupt):
    """A signal that ends the run where it is, raised from the signal handler: nothing trained
    since the last checkpoint, or a second signal. A KeyboardInterrupt, so that no `except
    Exception` on the way (a checkpoint read, a library's) takes it for an error of its own;
    the command line prints `message` as one line and exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.message, self.exit_code = message, exit_code


@contextlib.contextmanager
def stop_on_signals(run, workers: int):
    """While `run` trains on one machine, SIGTERM (a scheduler's preemption) and SIGINT (Ctrl-C)
    set `run.stop_signal`, and the run finishes its step, writes a checkpoint and raises
    Interrupted (cream_tf.callbacks.WriteCheckpoints). With no step done since the last
    checkpoint (while the first step's graph is built, say) there is nothing to save, and a
    second signal means the user will not wait: both raise StoppedAtOnce from the handler.

    `run` has `stop_signal`, `steps_since_save` and `model_dir`. Across machines (`workers` > 1)
    the workers would have to agree on the step to stop at (every worker takes part in a save);
    there a signal ends the process as it would without this."""
    if threading.current_thread() is not threading.main_thread() or workers > 1:
        yield
        return

    def handler(signum, frame):
        name = signal.Signals(signum).name
        if run.stop_signal:
            raise StoppedAtOnce(
                f"Stopped by a second {name}: ended without waiting for the step; the checkpoints in "
                f"{run.model_dir} are those from before it. Run the same command again to resume.",
                128 + signum,
            )
        if not run.steps_since_save:
            raise StoppedAtOnce(
                f"Stopped by {name} before any step since the last checkpoint: nothing to save. Run the same "
                "command again to resume (or start, if no checkpoint was written).",
                128 + signum,
            )
        run.stop_signal = signum
        logging.warning("%s: finishing this step, then writing a checkpoint (again to stop at once).", name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
