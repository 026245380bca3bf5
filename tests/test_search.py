"""The Cream search, as specified in the algorithm notes: board rules, teacher choice, one traced
graph for every path, the closed-form meta gradient, distribution and exact resume."""

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

import keras
import numpy as np
import pytest
import tensorflow as tf

from cream_tf import config as config_lib
from cream_tf import export, launch
from cream_tf.arch import SearchSpace
from cream_tf.config import SearchConfig
from cream_tf.flops import flops_of
from cream_tf.search.board import Entry, PrioritizedBoard
from cream_tf.search.run import SearchRun
from cream_tf.search.sampler import PathSampler
from cream_tf.search.selection import PathEvaluator, pareto_front, ranks_to_export
from cream_tf.search.trainer import SearchModel, soft_cross_entropy
from cream_tf.supernet import Supernet

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SPACE = SearchSpace.create(
    (1, 1, 1, 1, 1), input_size=16, in_channels=1, num_classes=10, stem_stride=1, stem_channels=8, dropout=0.0
)


def random_path(space, rng):
    return rng.integers(0, 6, size=len(space.positions)).astype(np.int32)


def path_variables(supernet, path):
    """The variables (weights and BatchNorm statistics) of the blocks `path` runs."""
    return [v for block in supernet.blocks_of(path) for v in block.weights]


def train_step(trainer, images, labels, path, lr, distill, meta=False):
    """One step as fit runs it: the host sets the step, Keras runs train_step."""
    trainer.set_step(np.asarray(path), lr, distill, meta)
    return trainer.train_on_batch(images, labels, return_dict=True)


def _entry(accuracy, macs, path=(0,) * 5):
    return Entry(tuple(path), accuracy, macs, np.zeros((4, 16, 16, 1)), np.zeros((4, 10)))


# --- the board ----------------------------------------------------------------------------------


def test_board_admits_until_full_then_by_gap_or_fewer_flops():
    board = PrioritizedBoard(size=3, accuracy_gap=5.0)
    for accuracy, macs in [(50, 10), (60, 10), (40, 10)]:
        assert board.offer(_entry(accuracy, macs))
    assert [e.accuracy for e in board.entries] == [60, 50, 40]  # best first
    assert not board.offer(_entry(44, 10))  # beats the weakest by less than the gap
    assert not board.offer(_entry(39, 5))  # fewer FLOPs but not more accurate
    assert board.offer(_entry(41, 9))  # more accurate AND fewer FLOPs than the weakest
    assert [e.accuracy for e in board.entries] == [60, 50, 41]  # truncated to the size
    assert board.offer(_entry(47, 50))  # beats the weakest (41) by more than the gap
    assert [e.accuracy for e in board.entries] == [60, 50, 47]


def test_board_orders_ties_by_fewer_flops():
    board = PrioritizedBoard(size=3, accuracy_gap=5.0)
    for macs in (30, 10, 20):
        board.offer(_entry(50, macs))
    assert [e.macs for e in board.entries] == [10, 20, 30]


# --- the sampler --------------------------------------------------------------------------------


def test_sampler_respects_the_range_and_the_prior_and_resumes_exactly():
    space = SearchSpace.create((2, 2, 2, 2, 2), input_size=28, in_channels=1, num_classes=10, stem_stride=1)
    sampler = PathSampler(space, (13, 16), prior=(0.05, 0.2, 0.05, 0.5, 0.05, 0.15), seed=3)
    paths = [sampler.sample() for _ in range(200)]
    for path, macs in paths[:20]:
        assert macs == flops_of(space.arch(list(path)))
        assert 13e6 <= macs <= 16e6
    counts = np.bincount(np.concatenate([p for p, _ in paths]), minlength=6) / (200 * 10)
    assert counts[3] > 0.35 and counts[0] < 0.15  # the prior favours choice 3 (k5 e6)
    state = sampler.state()
    ahead = [sampler.sample()[0].tolist() for _ in range(5)]
    sampler.set_state(state)
    assert [sampler.sample()[0].tolist() for _ in range(5)] == ahead


def test_unreachable_flops_range_names_the_reachable_one():
    with pytest.raises(ValueError, match=r"its paths cost from \d+\.\d+ to \d+\.\d+ MFLOPs"):
        PathSampler(SPACE, (500, 600))


# --- the supernet -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trainer():
    keras.utils.set_random_seed(0)
    config = SearchConfig()
    config.cream.board_size = 3
    config.train.weight_decay = 1e-4
    supernet = Supernet(SPACE)
    trainer = SearchModel(supernet, config, global_batch_size=16)
    trainer.compile(optimizer=None)
    return trainer


def _batch(seed, n=16):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 16, 16, 1)).astype("float32"), rng.integers(0, 10, n).astype("int32"))


def test_extracted_child_equals_the_supernet_path(trainer):
    images, _ = _batch(0)
    path = random_path(SPACE, np.random.default_rng(5))
    child = trainer.supernet.extract_child(path)
    expected = trainer.supernet(images, tf.constant(path), training=False)
    np.testing.assert_allclose(child(images, training=False), expected, atol=1e-5)


def test_one_trace_serves_fifty_paths_and_skipped_blocks_stay_put(trainer):
    rng = np.random.default_rng(1)
    board = PrioritizedBoard(3, 5.0)
    supernet = trainer.supernet
    for step in range(50):
        images, labels = _batch(step)
        path = random_path(SPACE, rng)
        before = {id(v): v.numpy() for v in supernet.weights}
        out = train_step(trainer, images, labels, path, 0.05, len(board) > 0, meta=step in (10, 40))
        if step < 3:
            board.offer(Entry(tuple(path), 100.0 * float(out["correct"]) / 16, step, out["images"], out["probs"]))
            trainer.load_board(board)
        if step in (10, 40):  # momentum and weight decay must not move blocks the path skipped
            used = {id(v) for v in path_variables(supernet, path)}
            for v in supernet.weights:
                if id(v) not in used:
                    np.testing.assert_array_equal(v.numpy(), before[id(v)], err_msg=v.path)
    assert trainer.traces == {"train": 1, "meta": 1}  # the meta step at steps 10 and 40 only


def keras_recalibration(model, batches):
    """The reference: Keras' own BatchNormalization, momentum i/(i+1) on batch i, which leaves
    the exact mean of the batches' statistics (with the biased variance)."""
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for i, images in enumerate(batches):
        for layer in norms:
            layer.momentum = i / (i + 1)
        model(images, training=True)


def test_path_evaluator_recalibrates_each_path_as_a_child_net_would():
    """Selection recalibrates on the supernet with one trace for every path; the reference is
    the extracted child recalibrated with Keras' own BatchNormalization (an exact running mean)."""
    keras.utils.set_random_seed(1)
    supernet = Supernet(SPACE)  # its own: recalibration rewrites the statistics other tests score with
    calibration = [tf.constant(_batch(100 + i)[0]) for i in range(3)]
    evaluator = PathEvaluator(supernet, calibration)
    rng = np.random.default_rng(7)
    for _ in range(2):
        path = random_path(SPACE, rng)
        reference = supernet.extract_child(path)
        keras_recalibration(reference, calibration)
        skipped = {id(v): v.numpy() for v in supernet.weights}
        used = {id(v) for v in path_variables(supernet, path)}
        evaluator.recalibrate(path)
        for v in supernet.weights:
            if id(v) not in used:
                np.testing.assert_array_equal(v.numpy(), skipped[id(v)], err_msg=v.path)
        child = supernet.extract_child(path)
        for ours, theirs in zip(child.layers, reference.layers):
            if isinstance(ours, keras.layers.BatchNormalization):
                np.testing.assert_allclose(ours.moving_mean, theirs.moving_mean, rtol=1e-4, atol=1e-5)
                # The fused op keeps the unbiased variance: n / (n - 1) times Keras', n = batch x height x width.
                n = 16 * int(np.prod(theirs.input.shape[1:3]))
                np.testing.assert_allclose(
                    ours.moving_variance, theirs.moving_variance * n / (n - 1), rtol=1e-4, atol=1e-7
                )
        images = tf.constant(_batch(200)[0])
        np.testing.assert_allclose(
            evaluator._predict(images, tf.constant(path)), child(images, training=False), atol=1e-5
        )
    assert evaluator.recalibrator._blend.experimental_get_tracing_count() == 1


def test_export_paths_name_the_winner_the_pareto_front_or_every_path():
    # board_rank: (mflops, val_top1). Cheapest first: 3 (front), 1 (front), 4 (as cheap, less
    # accurate), 0 (front, the winner), 2 (dearer than 0, less accurate).
    figures = {0: (11.0, 74.0), 1: (10.9, 71.9), 2: (11.7, 74.0), 3: (10.7, 71.1), 4: (10.9, 71.0)}
    rows = [{"board_rank": rank, "mflops": m, "val_top1": v} for rank, (m, v) in figures.items()]
    best = max(range(len(rows)), key=lambda i: (rows[i]["val_top1"], -rows[i]["mflops"]))  # as selection ranks
    assert best == 0
    assert [row["board_rank"] for row in pareto_front(rows)] == [3, 1, 0]
    assert ranks_to_export(rows, best, "winner") == [0]
    assert ranks_to_export(rows, best, "pareto") == [0, 1, 3]
    assert ranks_to_export(rows, best, "all") == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="selection.export_paths='front' is not valid; valid: winner, pareto, all"):
        config_lib.load(SearchConfig, None, "selection.export_paths=front").validate()


def test_board_stores_the_students_own_softmax(trainer):
    images, labels = _batch(7)
    path = tf.constant(random_path(SPACE, np.random.default_rng(7)))
    with keras.StatelessScope():  # the same forward the step will run, without changing anything
        expected = tf.nn.softmax(trainer.supernet(images, path, training=True))[:4]
    out = train_step(trainer, images, labels, path, 0.0, distill=True)
    np.testing.assert_allclose(out["probs"], expected, atol=1e-5)
    np.testing.assert_array_equal(out["images"], images[:4])


def _fill_board(trainer, seed=11):
    rng = np.random.default_rng(seed)
    board = PrioritizedBoard(3, 5.0)
    for i in range(3):
        images, _ = _batch(100 + i)
        board.offer(
            Entry(
                tuple(random_path(SPACE, rng)),
                50.0 + i,
                i,
                images[:4],
                rng.dirichlet(np.ones(10), size=4).astype("float32"),
            )
        )
    trainer.load_board(board)
    return board


def log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def test_distillation_loss_is_the_papers_mix_of_kd_and_ce(trainer):
    """One step after warm-up, recomputed independently in numpy from the same logits:
    teacher = the board entry with the best meta score, m = sigmoid(its score),
    loss = mean((m * KD + (2 - m) * CE) / 2), CE label-smoothed (0.1), KD against the teacher's softmax."""
    board = _fill_board(trainer, seed=13)
    images, labels = _batch(31)
    path = random_path(SPACE, np.random.default_rng(14))
    scores = []
    for k in range(len(board)):
        probs = tf.nn.softmax(trainer.supernet(board.entries[k].images, path, training=False)).numpy()
        feature = (probs - board.entries[k].probs).reshape(1, -1)
        scores.append((feature @ trainer.meta.dense.kernel.numpy() + trainer.meta.dense.bias.numpy()).item())
    teacher = int(np.argmax(scores))
    m = 1 / (1 + np.exp(-scores[teacher]))
    with keras.StatelessScope():  # the step's own training-mode forwards, leaving the statistics alone
        logits = trainer.supernet(images, path, training=True).numpy().astype(np.float64)
        teacher_probs = tf.nn.softmax(trainer.supernet(images, np.array(board.entries[teacher].path), training=True))
    smoothed = np.eye(10)[labels] * 0.9 + 0.1 / 10
    ce = -(smoothed * log_softmax(logits)).sum(-1)
    kd = -(teacher_probs.numpy() * log_softmax(logits)).sum(-1)
    out = train_step(trainer, images, labels, path, 0.0, distill=True)
    assert out["teacher"] == teacher
    np.testing.assert_allclose(out["matching"], m, rtol=1e-5)
    np.testing.assert_allclose(out["kd"], kd.mean(), rtol=1e-4)
    np.testing.assert_allclose(out["ce"], ce.mean(), rtol=1e-4)
    np.testing.assert_allclose(out["loss"], ((m * kd + (2 - m) * ce) / 2).mean(), rtol=1e-4)
    assert abs(out["loss"] - ce.mean()) > 1e-3  # distillation changed the loss: the check can fail


def test_teacher_is_the_best_scoring_entry_and_m_is_its_sigmoid(trainer):
    _fill_board(trainer)
    path = tf.constant(random_path(SPACE, np.random.default_rng(3)))
    rng = np.random.default_rng(4)
    for _ in range(3):
        kernel = trainer.meta.dense.kernel
        kernel.assign(rng.normal(size=kernel.shape).astype("float32"))
        features = trainer.board_features(path)
        scores = trainer.board_scores(features)
        index, m = trainer.select_teacher(path)
        assert int(index) == int(np.argmax(scores.numpy()))
        np.testing.assert_allclose(float(m), 1 / (1 + np.exp(-scores.numpy()[int(index)])), rtol=1e-6)
    # Entries' scores are their own: one stored images' forward each (here: recomputed one by one).
    images = trainer.board_images.numpy()
    for k in range(3):
        probs = tf.nn.softmax(trainer.supernet(images[k], path, training=False))
        feature = tf.reshape(probs - trainer.board_probs[k], (1, -1))
        np.testing.assert_allclose(trainer.meta(feature)[0], scores[k], rtol=1e-4, atol=1e-5)


def test_meta_gradient_matches_nested_tapes_and_finite_differences(trainer):
    _fill_board(trainer, seed=12)
    images, labels = _batch(21)
    path = tf.constant(random_path(SPACE, np.random.default_rng(8)))
    meta_vars = trainer.meta.trainable_variables
    rng = np.random.default_rng(9)
    for v in meta_vars:
        v.assign(rng.normal(scale=0.3, size=v.shape).astype("float32"))
    lr = tf.constant(0.5)
    closed, index, m, _ = trainer.meta_gradient(images, labels, path, lr)
    features = trainer.board_features(path)

    s = trainer.cream.slice
    variables = trainer.path_optimizer.variables
    teacher = trainer.teacher_probs(images[:s], trainer.board_paths[index])

    def validation_loss():
        """L(w - lr * m(theta) * grad KD(w)), differentiable in theta through m."""
        m = tf.sigmoid(trainer.meta(features[index][None])[0])
        with keras.StatelessScope():
            with tf.GradientTape() as inner:
                kd = tf.reduce_mean(soft_cross_entropy(teacher, trainer.supernet(images[:s], path, training=True)))
            g = [tf.zeros_like(v) if d is None else d for d, v in zip(inner.gradient(kd, variables), variables)]
        updated = [v - lr * m * d for v, d in zip(variables, g)]
        return trainer.validation_loss(images[s : 2 * s], labels[s : 2 * s], path, updated)[0]

    with tf.GradientTape() as outer:
        loss = validation_loss()
    nested = outer.gradient(loss, meta_vars)
    for a, b in zip(closed, nested):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-7)

    bias = meta_vars[1]
    eps = 1e-3  # central differences: the error shrinks with eps^2, float32 round-off is ~1e-4 here
    original = bias.numpy()
    bias.assign(original + eps)
    plus = float(validation_loss())
    bias.assign(original - eps)
    minus = float(validation_loss())
    bias.assign(original)
    finite = (plus - minus) / (2 * eps)
    assert abs(float(closed[1][0])) > 1e-4  # large enough to compare
    np.testing.assert_allclose(float(closed[1][0]), finite, rtol=2e-2)


# --- distribution (fresh processes: logical devices and TF_CONFIG must come first) ----------------


def _run_worker(args, env=None):
    return subprocess.Popen(
        [sys.executable, str(HERE / "distributed_worker.py"), *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    """Two steps on one device, then on two logical devices under MirroredStrategy."""
    out = tmp_path_factory.mktemp("mirrored") / "out.npz"
    process = _run_worker(["mirrored", str(out)])
    output, _ = process.communicate(timeout=1200)
    assert process.returncode == 0, output[-3000:]
    return dict(np.load(out))


# Its processes take 4-8 GB: never beside the other tests that start such processes (conftest).
@pytest.mark.xdist_group("big_processes")
def test_mirrored_step_on_two_devices_equals_one_device(mirrored):
    weights = {name: value for name, value in mirrored.items() if name.startswith(("one/", "two/"))}
    assert "needs at least 8 images per replica" in str(mirrored["slice_error"])
    # Step 1 is the specification (1e-5); step 2 distils from the board step 1 filled, and the
    # two summation orders have drifted a little more by then.
    for step, atol in ((1, 1e-5), (2, 1e-4)):
        names = [k.split("/", 2)[2] for k in weights if k.startswith(f"one/{step}/")]
        assert names
        for name in names:
            one, two = weights[f"one/{step}/{name}"], weights[f"two/{step}/{name}"]
            if name.endswith("moving_variance"):
                # Each replica updates it with ITS batch's unbiased variance, n/(n-1) with half the n.
                np.testing.assert_allclose(one, two, rtol=0.1, err_msg=name)
            else:
                np.testing.assert_allclose(one, two, atol=atol, err_msg=f"step {step}: {name}")


# Its processes take 4-8 GB: never beside the other tests that start such processes (conftest).
@pytest.mark.xdist_group("big_processes")
def test_two_local_workers_end_with_equal_weights_and_trace_one_replica_each(tmp_path, mirrored):
    """`main.py --local_workers=2`'s launcher: each worker traces one replica's graph (MirroredStrategy
    traces the step once per replica in one process), and they train the same weights."""
    worker = [str(HERE / "distributed_worker.py"), "multiworker", str(tmp_path / "worker{}.npz")]
    environment = {"CUDA_VISIBLE_DEVICES": ""}
    with mock.patch.dict(os.environ, environment):
        assert launch.launch(worker, 2, tmp_path / "logs") == 0, (tmp_path / "logs" / "worker_1.log").read_text()[
            -3000:
        ]
    a, b = (dict(np.load(tmp_path / f"worker{i}.npz")) for i in range(2))
    assert set(a) == set(b)
    for name in a:
        if not name.startswith("ops/"):  # the chief's and the other worker's op counts may differ by a few
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    one, two = mirrored["ops/one"], mirrored["ops/two"]
    assert two > 1.6 * one  # what the launcher avoids: MirroredStrategy builds every replica's copy
    for each in (a["ops/worker"], b["ops/worker"]):
        assert each < 1.15 * one, f"a worker traced {each} ops, one replica alone {one}"


# --- the whole search -----------------------------------------------------------------------------

TINY = """
data: {name: fashion_mnist, image_size: 16, channels: 1, num_classes: 10, validation_size: 256, batch_size: 32}
space: {flops_max: 100, depths: [1, 1, 1, 1, 1], stem_stride: 1, stem_channels: 8}
cream: {board_size: 2, warmup_epochs: 1, meta_update_every: 2}
train: {epochs: 2, steps_per_epoch: 5, lr: 0.05, deterministic: true}
selection: {recalibrate_batches: 2, eval_batches: 2}
"""


def _tiny(tmp_path, override="", text=TINY):
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    return config_lib.load(SearchConfig, str(path), override)


def _final_state(model_dir):
    """The latest checkpoint's tensors, the host state (JSON in a string tensor) parsed."""
    reader = tf.train.load_checkpoint(str(model_dir / "checkpoints"))
    state = {
        name: reader.get_tensor(name)
        for name in reader.get_variable_to_shape_map()
        if "save_counter" not in name and name != "_CHECKPOINTABLE_OBJECT_GRAPH"
    }
    (host,) = [name for name in state if name.startswith("host_state/")]
    return state, json.loads(state.pop(host))


def assert_same_state(a, b, what=""):
    """Equal up to float32 round-off (the meta step's last bits can differ between traces)."""
    (tensors_a, host_a), (tensors_b, host_b) = a, b
    assert set(tensors_a) == set(tensors_b) and len(tensors_a) > 100  # supernet, optimizers, meta, board
    for name in tensors_a:
        np.testing.assert_allclose(tensors_a[name], tensors_b[name], rtol=1e-5, atol=1e-8, err_msg=f"{what}{name}")
    history_a, history_b = host_a.pop("history"), host_b.pop("history")
    np.testing.assert_allclose(np.array(history_a), np.array(history_b), rtol=1e-4, err_msg=f"{what}history")
    for entry_a, entry_b in zip(host_a.pop("board"), host_b.pop("board"), strict=True):
        assert entry_a["path"] == entry_b["path"] and entry_a["macs"] == entry_b["macs"], what
        assert entry_a["accuracy"] == pytest.approx(entry_b["accuracy"]), what
    for sums in (host_a.pop("sums"), host_b.pop("sums")):
        assert set(sums) == {"loss", "correct", "count"}
    for seconds in (host_a.pop("first_step_seconds"), host_b.pop("first_step_seconds")):
        assert seconds > 0, what  # tracing and the first step, timed for the next start's log line
    assert host_a == host_b, what  # epoch, step, meta updates, the sampler's random state


def scalars(run_dir, tag) -> dict[int, float]:
    values = {}
    for path in (run_dir / "tensorboard").iterdir():
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = float(tf.make_ndarray(value.tensor))
    return values


def test_search_runs_end_to_end(tmp_path, capfd):
    whole = SearchRun(_tiny(tmp_path), tmp_path / "whole", strategy=tf.distribute.get_strategy())
    meta_before = [v.numpy() for v in whole.fit_model.meta.trainable_variables]
    # cream_tf logs through absl's logger; read it there, whatever level or propagation other
    # libraries loaded in this process have given it.
    records = []
    keep = logging.Handler(logging.INFO)
    keep.emit = records.append
    absl_logger, level = logging.getLogger("absl"), logging.getLogger("absl").level
    absl_logger.addHandler(keep)
    absl_logger.setLevel(logging.INFO)
    try:
        result = whole.run()
    finally:
        absl_logger.removeHandler(keep)
        absl_logger.setLevel(level)
    run_dir = tmp_path / "whole"
    # Output to a file (not a terminal): plain progress lines, here every step of 5, no bar redraws.
    lines = [r.getMessage() for r in records if r.getMessage().startswith("epoch ")]
    assert len(lines) == 10 and lines[0].startswith("epoch 1/2, step 1/5: loss "), lines
    assert re.fullmatch(
        r"epoch 2/2, step 5/5: loss [\d.e+-]+, top1 [\d.]+, board 2, board_best [\d.]+, board_worst [\d.]+ "
        r"\([\d.]+ s\)",
        lines[-1],
    ), lines[-1]
    assert any(r.getMessage().startswith("Train step built; the first step took") for r in records)
    # The meta update's graph is built at the first meta update (step 7), and the log says so once.
    assert [r.getMessage()[:21] for r in records if "meta update" in r.getMessage().lower()] == [
        "First meta update sin",
        "Meta update built; it",
    ]
    printed = "".join(capfd.readouterr())
    assert not any(code in printed for code in ("\r", "\b", "\x1b")), "progress-bar redraws in a log file"
    # Cream, not SPOS: the second epoch distils (KD > 0 at its last step, the 10th), and the meta
    # network is updated at batches 2 and 4 of it (every 2 steps, not at batch 0), and moves.
    assert scalars(run_dir, "train/kd")[10] > 0
    assert whole.meta_updates == 2 and sorted(scalars(run_dir, "meta/grad_norm")) == [7, 9]
    assert all(v > 0 for v in scalars(run_dir, "meta/change").values())
    moved = [np.abs(v.numpy() - b).max() for v, b in zip(whole.fit_model.meta.trainable_variables, meta_before)]
    assert max(moved) > 0
    assert [row[3] >= 0 for row in whole.history] == [False] * 6 + [True] * 4  # a teacher from step 7 on
    for name in ("config.yaml", "board.json", "search_result.json", "search_plot.png"):
        assert (run_dir / name).is_file(), name
    # TensorBoard also holds the config (text and hparams), the result and the plot.
    tags = set()
    for path in (run_dir / "tensorboard").iterdir():
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags |= {value.tag for value in event.summary.value}
    assert {"config", "_hparams_/session_start_info", "result/val_top1", "result/search_plot"} <= tags, tags
    assert scalars(run_dir, "result/val_top1") == {10: result["winner"]["val_top1"]}
    winner = result["winner"]
    assert winner is not None and len(result["board"]) == 2
    assert [row["winner"] for row in result["board"]].count(True) == 1
    assert winner["val_top1"] == max(row["val_top1"] for row in result["board"])
    entry = run_dir / winner["entry"]  # relative to model_dir
    # By default the winner and the rest of the Pareto front are exported, and only they.
    cheapest_first = sorted(result["board"], key=lambda row: (row["mflops"], -row["val_top1"]))
    front = [
        row for i, row in enumerate(cheapest_first) if all(row["val_top1"] > q["val_top1"] for q in cheapest_first[:i])
    ]
    assert [row["pareto"] for row in result["board"]] == [row in front for row in result["board"]]
    exported = sorted(row["entry"] for row in result["board"] if "entry" in row)
    assert exported == sorted(f"zoo/board_{row['board_rank']:02d}" for row in result["board"] if row["pareto"])
    assert [f"zoo/{p.name}" for p in sorted((run_dir / "zoo").iterdir())] == exported
    board_file = json.loads((run_dir / "board.json").read_text())["board"]
    assert [(row["path"], row["train_top1"]) for row in board_file] == [
        (row["path"], row["train_top1"]) for row in result["board"]
    ]  # one format for paths and accuracies in both files
    meta = json.loads((entry / "metadata.json").read_text())
    assert meta["architecture"]["string"] == winner["arch"]
    # The schema every writer shares, with the data it was searched on (what --mode=qat trains on).
    assert set(meta) == {*export.ENTRY_KEYS, "search"} and meta["produced_by"] == "search"
    assert meta["data"] == config_lib.to_dict(_tiny(tmp_path).data) and meta["preprocessing"]["input_size"] == 16
    assert (entry / "labels.txt").read_text().splitlines()[:2] == ["T-shirt/top", "Trouser"]  # Fashion-MNIST's
    loaded = keras.models.load_model(entry / "model.keras")
    assert loaded.input_shape == (None, 16, 16, 1)
    # Resuming exactly (from an epoch's end and from a step checkpoint, in new processes):
    # test_reliability.test_a_search_killed_anywhere_resumes_to_the_same_end.


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochz=3", "Unknown config key 'train.epochz'"),
        ("space.flops_max=0.5", "No path of this search space meets the FLOPs range"),
        ("data.num_classes=5", "set data.num_classes to 10"),
        ("cream.pick_method=best", "cream.pick_method='best' is not valid; valid: meta, top1, none"),
        ("cream.meta_update_every=5", "would never update the meta network"),
        ("train.lr=[0.1,", "Error: --params_override train.lr is not valid YAML at line 1, column 6"),
    ],
)
def test_bad_input_fails_before_training(tmp_path, override, message):
    (tmp_path / "tiny.yaml").write_text(TINY)
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "main.py"),
            "--mode=search",
            f"--config_file={tmp_path / 'tiny.yaml'}",
            f"--params_override={override}",
            f"--model_dir={tmp_path / 'run'}",
        ],
        cwd=REPO,
        # As a user runs it: TensorFlow's log level not set (the tests set it for themselves).
        env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "run" / "checkpoints").exists()
    # TensorFlow's own log lines are off unless --verbose: the error is not buried in them.
    assert "cuInit" not in result.stderr and "mirrored_strategy.py" not in result.stderr, result.stderr[-2000:]


def test_missing_data_says_how_to_get_it(tmp_path, monkeypatch):
    from cream_tf.data import sources

    monkeypatch.setattr(sources, "FASHION_MNIST_DIRS", (str(tmp_path / "nowhere"),))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        SearchRun(_tiny(tmp_path), tmp_path / "run", strategy=tf.distribute.get_strategy())
    assert not (tmp_path / "run").exists()
