"""Runs search training steps in a fresh process, for the distribution tests.

    python distributed_worker.py mirrored OUT.npz   one step on one device, then on two logical
                                                    CPU devices under MirroredStrategy
    python distributed_worker.py multiworker OUT_{}.npz   (with TF_CONFIG, as cream_tf.launch
                                                    starts it) a few steps under
                                                    MultiWorkerMirroredStrategy; {} is the worker's index

Each also saves the graph ops its training traced (`ops/...`: nodes of every function it added to
TensorFlow's function library), to compare what one replica and two cost.

Logical devices must be configured before TensorFlow initializes, hence a separate process.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from tensorflow.python.eager import context

MODE, OUT = sys.argv[1], sys.argv[2]
if MODE == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras

from cream_tf.arch import SearchSpace
from cream_tf.candidates import Candidate, OpSet
from cream_tf.config import SearchConfig
from cream_tf.search.board import Entry, PrioritizedBoard
from cream_tf.search.trainer import SearchModel
from cream_tf.supernet import Supernet

# Two candidates per position: what is compared does not depend on how many a position has, and
# the step's graph, which each replica traces (most of these processes' time), is a third of the
# paper space's six.
OPS = OpSet((Candidate(kernel=3, expansion=4), Candidate(kernel=5, expansion=6)))
SPACE = SearchSpace.create(
    (1, 1, 1, 1, 1), input_size=16, in_channels=1, num_classes=10, stem_stride=1, stem_channels=8, dropout=0.0, ops=OPS
)  # dropout masks differ per replica
BATCH = 16


def batch(seed):
    rng = np.random.default_rng(seed)
    half = rng.normal(size=(BATCH // 2, 16, 16, 1)).astype("float32")
    labels = rng.integers(0, 10, BATCH // 2).astype("int32")
    # BatchNorm normalizes per replica (no cross-replica sync, as in the official code); a batch
    # made of one half twice gives both replicas the statistics of the whole batch.
    return np.concatenate([half, half]), np.concatenate([labels, labels])


class Capture(keras.callbacks.Callback):
    """Keeps the last step's outputs (figures and the board candidate)."""

    def on_train_batch_end(self, batch, logs=None):
        self.logs = logs


def graph_ops() -> int:
    """Nodes of every function traced in this process so far."""
    library = context.context()
    return sum(len(library.get_function_def(name).node_def) for name in library.list_function_names())


def train(strategy, steps, initial=None, meta=True):
    """`steps` steps through Keras' fit, the host setting each step as the search does."""
    keras.utils.set_random_seed(0)
    config = SearchConfig()
    config.cream.board_size = 2
    with strategy.scope():
        supernet = Supernet(SPACE)
        trainer = SearchModel(supernet, config, BATCH)
        trainer.compile(optimizer=None)
    if initial is not None:  # the same starting point, whatever order initializers ran in
        for variable, value in zip(supernet.weights + trainer.meta.weights, initial):
            variable.assign(value)
    board = PrioritizedBoard(2, 5.0)
    rng = np.random.default_rng(1)
    snapshots = []
    for step in range(steps):
        path = rng.integers(0, len(OPS.ops), size=len(SPACE.positions)).astype(np.int32)
        distill = len(board) > 0
        trainer.set_step(path, 0.1, distill, meta=distill and meta)
        capture = Capture()
        # Keras splits the global batch over the replicas, as it does in the search.
        trainer.fit(
            tf.data.Dataset.from_tensor_slices(batch(step)).batch(BATCH),
            epochs=1,
            steps_per_epoch=1,
            shuffle=False,
            verbose=0,
            callbacks=[capture],
        )
        out = capture.logs
        if board.offer(Entry(tuple(path), float(out["correct"]), step, out["images"], out["probs"])):
            trainer.load_board(board)
        snapshots.append(weights(supernet, trainer))
    return snapshots or [weights(supernet, trainer)]


def weights(supernet, trainer):
    variables = supernet.weights + trainer.meta.weights
    return {v.path: v.numpy() for v in variables}


def slice_error(strategy) -> str:
    """What a search says when each replica's share of the batch is less than two meta slices."""
    import tempfile

    from cream_tf.search.run import SearchRun

    config = SearchConfig()
    config.data.batch_size = 8  # 4 per replica; the meta step needs 2 x cream.slice (4)
    try:
        SearchRun(config, tempfile.mkdtemp(), strategy=strategy)
    except ValueError as error:
        return str(error)
    return ""


if MODE == "mirrored":
    one = tf.distribute.OneDeviceStrategy("/cpu:0")
    two = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    # The second step updates the meta network, then distils from the board path the first one left.
    initial = list(train(one, 0)[0].values())
    before = graph_ops()
    a = train(one, 2, initial)
    middle = graph_ops()
    b = train(two, 2, initial)
    np.savez(
        OUT,
        **{
            f"{kind}/{step}/{k}": v
            for kind, runs in (("one", a), ("two", b))
            for step, snapshot in enumerate(runs, start=1)
            for k, v in snapshot.items()
        },
        **{"ops/one": middle - before, "ops/two": graph_ops() - middle},
        slice_error=slice_error(two),
    )
else:
    # Two steps: a warm-up step that fills the board, then a meta step and one that distils from it.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    before = graph_ops()
    final = train(strategy, 2)[-1]
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    np.savez(OUT.format(index), **final, **{"ops/worker": graph_ops() - before})
print("done")
