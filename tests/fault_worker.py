"""Runs the tiny search of the reliability tests in a fresh process, killed for real at a given
point, as a crash, preemption or power cut would end it.

    python fault_worker.py CONFIG MODEL_DIR none       # runs (or resumes) to the end
    python fault_worker.py CONFIG MODEL_DIR kill       # SIGKILL in step 4 of epoch 2
    python fault_worker.py CONFIG MODEL_DIR sigterm    # SIGTERM in step 2 of epoch 2

Exits as main.py does (a RunError: its message, its exit code); writes MODEL_DIR/done.json with
the board when the run ends. Selection is left out: the test compares the board and the state it
would select from, and two more graphs to trace in every process that ends would only cost time
(tests/test_search.py runs the whole search, selection and export included).
"""

import json
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import tensorflow as tf
from absl import logging

from cream_tf import RunError
from cream_tf import config as config_lib
from cream_tf.config import SearchConfig
from cream_tf.search.run import SearchRun

CONFIG, MODEL_DIR, FAULT = sys.argv[1:4]


class SignalInStep(keras.callbacks.Callback):
    """Sends `signum` to this process at the end of step `step` of epoch 2, before the run's
    own end-of-step work (checkpoints) sees it."""

    def __init__(self, run, step, signum):
        super().__init__()
        self.run, self.step, self.signum = run, step, signum

    def on_train_batch_end(self, batch, logs=None):
        if self.run.epoch == 1 and self.run.offset + batch + 1 == self.step:
            os.kill(os.getpid(), self.signum)


logging.set_verbosity(logging.INFO)  # the resume and lock messages the test reads
run = SearchRun(config_lib.load(SearchConfig, CONFIG), MODEL_DIR, strategy=tf.distribute.get_strategy())
run.finish = dict  # no selection (above): the run's result is its timings only
if FAULT in ("kill", "sigterm"):
    callbacks = run.callbacks
    fault = SignalInStep(run, 4, signal.SIGKILL) if FAULT == "kill" else SignalInStep(run, 2, signal.SIGTERM)
    run.callbacks = lambda: [*callbacks(), fault]
elif FAULT != "none":
    raise SystemExit(f"unknown fault {FAULT!r}")
try:
    run.run()
except RunError as error:
    print(f"Error: {error}", file=sys.stderr)
    raise SystemExit(error.exit_code) from None
with open(os.path.join(MODEL_DIR, "done.json"), "w") as f:
    json.dump(run.board.summary(), f)
