"""cream_tf's search, run as the product runs it and recorded step by step, against the reference.

`run_ours` trains a `SearchRun` with Keras' `fit` and the run's own callbacks (`_SampleAndAdmit`
samples the path, sets the learning rate and flags, admits to the board), with one more callback
that records every step: the path and its FLOPs, the flags, the step's figures, the board after
admission and the meta network. The batches are the run's own pipeline's, recorded as they are
fed. The reference (reference.search) starts from a copy of the same initial weights and is fed
the same batches and paths; `compare_steps` and `compare_final` list every figure that differs by
more than its tolerance (`Tolerances`, which says why each is what it is).
"""

from __future__ import annotations

import copy
import dataclasses
import time

import numpy as np
import torch

from reference.search import OURS, ReferenceSearch, Settings, Switches
from reference.supernet import TimmSupernet, WeightMap, copy_meta_to_torch, macs_of_path

# isort: off
# TensorFlow after torch and timm (torchvision): see reference/__init__.py.
import keras
import tensorflow as tf

from cream_tf.search.run import SearchRun

# isort: on


@dataclasses.dataclass(frozen=True)
class Tolerances:
    """How far the two implementations may differ, and why.

    Both compute in float32 with different kernels (oneDNN convolutions in TensorFlow, PyTorch's
    own; other summation orders in BatchNorm, softmax and the reductions): one step's figures
    differ by 1e-7..1e-6 relative. The steps carry these differences in the weights, and they
    grow as fast as the training dynamics separate two nearby weight vectors. At the test's
    learning rate (0.003) they barely grow: the reference started from weights perturbed by 1e-7
    (relative) stays within 5e-7 of the unperturbed one in loss over 40 steps, and ours stays
    within 4e-5 of the reference over 30. (At lr 0.05 the same perturbation grows about tenfold
    every two steps, to 1e-2 by step 10, and no tolerance could tell a fault from round-off;
    hence the test's learning rate.) "Measured" below is the largest difference over the test's
    run on a 2-core AMD EPYC; the bounds leave 4-50x for other machines' kernels and stay far
    below what a change of the algorithm makes (the table in tests/test_reference_step.py).
    """

    # Loss, CE and KD (means over the 32 images of a batch): relative. Measured: 3.4e-5.
    loss: float = 2e-4
    # m = sigmoid(score), in (0, 1): absolute. Measured: 3.5e-6.
    matching: float = 1e-4
    # The board's stored softmax outputs (values in [0, 1]), per image: absolute. Per image there
    # is no mean over the batch to average the errors out, as for the losses. Measured: 1.3e-4.
    probs: float = 1e-3
    # The meta update's validation loss (a mean over `slice` images): relative. Measured: 7.9e-5.
    meta_val_loss: float = 1e-3
    # The meta gradient is -lr * <grad L(w'), grad KD(w)> * dm/dtheta: an inner product of two
    # gradients over every weight of the path, each from `slice` images. Where its terms cancel
    # (kappa = sum |a_i b_i| / |sum a_i b_i|, 15-90 here) its relative round-off is kappa times
    # that of the gradients (measured: 5e-5..3e-4 for 8 images through BatchNorm, so up to 4e-3
    # at kappa 15). Bound on its norm: max(floor, per_kappa * kappa), relative; on the meta
    # weights: that relative error times how far the meta updates have moved them (with the
    # largest kappa so far), plus the round-off of weights of order 1. (With a slice of 4, the
    # product's default, kappa reached 1,200 and the two float32 meta gradients differed by up to
    # 50%: such a meta gradient is mostly round-off in either implementation.)
    meta_grad_per_kappa: float = 2e-3
    meta_grad_floor: float = 1e-3
    meta_weights: float = 1e-5
    # After the run, every supernet variable and the momenta. A difference that matters is in the
    # bulk of the weights, so the first bound is on all of them together (L2 norm): the difference
    # relative to how far training moved them (momenta: relative to their norm). Measured: 6.8e-4
    # (weights), 2.8e-5 (BatchNorm statistics), 3.3e-3 (momenta).
    weights_global: float = 1e-2
    momenta_global: float = 3e-2
    # Per tensor (largest element): relative to how far the tensor moved (momenta: to their largest
    # element), plus an absolute floor for values that are zero up to round-off (a BatchNorm's shift
    # when the next layer normalizes again, the running mean of a bias-free convolution of
    # normalized inputs: measured up to 3e-7). Measured: 4e-3 (weights), 2.1e-2 (momenta, which are
    # the last few steps' gradients; the largest is the ds block's, upstream of its SE's kinks).
    weights_rtol: float = 2e-2
    momenta_rtol: float = 0.1
    weights_atol: float = 3e-6
    # The squeeze-excite reduce layers end in a ReLU, and in every step some of their ~4,000
    # pre-activations (32 images x 144 channels) lie within round-off of zero (seen: 2e-6, against
    # a float32 error of 8e-6): one implementation passes their gradient and the other does not.
    # Against float64, such a layer's gradient was off by 16% in PyTorch's float32 and by 7e-6 in
    # TensorFlow's. Measured: 3.7e-2 (weights), 0.17 (momenta). Per tensor, these layers are only
    # checked for gross errors; they count in the L2 bounds above like every other.
    kink_rtol: float = 1.0
    kink_layers: tuple[str, ...] = ("se.conv_reduce",)
    # Discrete decisions within round-off of a tie are settled as ours settled them (and counted):
    # a teacher whose score is within this of the reference's best, a prediction whose two
    # largest logits are within this of each other.
    ambiguous_score: float = 1e-4
    ambiguous_logit: float = 1e-4


@dataclasses.dataclass
class Mismatch:
    step: int | None  # None: after the run
    figure: str
    ours: object
    reference: object
    error: float
    allowed: float

    def __str__(self):
        where = "after the run" if self.step is None else f"step {self.step}"
        values = f"ours {self.ours}, reference {self.reference} " if self.ours != "" else ""
        return f"{where}: {self.figure}: {values}(error {self.error:.3g}, allowed {self.allowed:.3g})"


class _Recorder(keras.callbacks.Callback):
    """After the run's own callbacks: what this step did, as the product decided and computed it."""

    def __init__(self, search, host):
        super().__init__()
        self.search, self.host, self.rows = search, host, []

    def on_train_batch_end(self, batch, logs=None):
        search, host = self.search, self.host
        row = {
            "path": np.array(host.path),
            "macs": int(host.macs),
            "lr": float(host.lr),
            "distill": bool(host.distill),
            "meta": bool(host.meta),
            "epoch": search.epoch,
            "time": time.time(),
            **{key: np.asarray(value) for key, value in logs.items()},
            "board": [(e.path, e.accuracy, e.macs, e.images.copy(), e.probs.copy()) for e in search.board.entries],
            "meta_weights": [v.numpy().copy() for v in search.fit_model.meta.trainable_variables],
        }
        self.rows.append(row)


class RecordedSearch(SearchRun):
    """A SearchRun that records the batches its pipeline feeds and every step (see _Recorder).

    `eager`: Keras runs the train step and the meta update without tracing them. The traced
    graphs compute the same; tracing them for even the smallest supernet takes 60-200 s of the
    2-core machine, more than this test's budget.
    """

    def __init__(self, config, model_dir, eager: bool = True):
        super().__init__(config, model_dir, strategy=tf.distribute.get_strategy())
        self.fed, self.recorder = [], None
        if eager:
            self.fit_model.compile(optimizer=None, run_eagerly=True)

    def dataset(self):
        batches = [(np.asarray(images), np.asarray(labels)) for images, labels in super().dataset()]
        self.fed.extend(batches)
        return tf.data.Dataset.from_tensor_slices(tuple(np.stack(part) for part in zip(*batches)))

    def callbacks(self):
        callbacks = super().callbacks()
        self.recorder = _Recorder(self, callbacks[0])  # callbacks[0] is the run's _SampleAndAdmit
        return [*callbacks, self.recorder]


@dataclasses.dataclass
class Recording:
    search: RecordedSearch
    net: TimmSupernet  # the reference supernet, with the run's initial weights
    meta: torch.nn.Linear
    initial: dict  # variable path -> initial value (Keras layout)
    initial_meta: list  # the meta network's kernel and bias
    seconds: float

    @property
    def rows(self):
        return self.search.recorder.rows


def run_ours(config, model_dir, eager: bool = True) -> Recording:
    search = RecordedSearch(config, model_dir, eager)
    template = search.space.template
    net = TimmSupernet(
        search.space.depths, template.num_classes, template.in_channels, template.stem_channels, template.stem_stride
    )
    weight_map = WeightMap(search.supernet, net)
    weight_map.copy_to_torch()
    meta = torch.nn.Linear(config.cream.slice * template.num_classes, 1)
    copy_meta_to_torch(search.fit_model.meta.dense, meta)
    initial = {v.path: v.numpy().copy() for v in search.supernet.weights}
    initial_meta = [v.numpy().copy() for v in search.fit_model.meta.trainable_variables]
    began = time.time()
    search.train()
    return Recording(search, net, meta, initial, initial_meta, time.time() - began)


class Referee:
    """Settles the reference's discrete decisions that float32 cannot: where ours decided
    otherwise and the reference's own choice is within round-off of a tie, it goes on with ours'
    (and says so in `ambiguous`); everywhere else it keeps its own, and a difference is a mismatch."""

    def __init__(self, tolerances: Tolerances):
        self.tol, self.row, self.ambiguous = tolerances, None, []

    def teacher(self, index: int, scores) -> int:
        ours = int(self.row["teacher"]) if self.row["distill"] else -1
        if 0 <= ours < len(scores) and ours != index and scores[index] - scores[ours] < self.tol.ambiguous_score:
            self.ambiguous.append(("teacher", self.step, index, ours, float(scores[index] - scores[ours])))
            return ours
        return index

    def correct(self, count: int, logits, labels) -> int:
        ours = int(self.row["correct"])
        top2 = torch.topk(logits, 2, dim=1).values
        close = int((top2[:, 0] - top2[:, 1] < self.tol.ambiguous_logit).sum())
        if ours != count and abs(ours - count) <= close:
            self.ambiguous.append(("correct", self.step, count, ours, close))
            return ours
        return count


def run_reference(
    recording: Recording, switches: Switches = OURS, tolerances=Tolerances(), referee: bool = True, ratios=None
):
    """The reference fed the recorded batches and paths. Returns (reference, its step outputs,
    the mismatches against the recording step by step, the decisions settled as ours)."""
    search = recording.search
    settings = Settings.from_config(search.config, search.steps_per_epoch)
    # Copies: one recording can be compared with several references (switches).
    net, meta = copy.deepcopy(recording.net), copy.deepcopy(recording.meta)
    reference = ReferenceSearch(net, meta, settings, switches)
    judge = Referee(tolerances) if referee else None
    template = search.space.template
    outputs, mismatches, kappa = [], [], 0.0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: more threads only wait for each other on a busy machine
    try:
        for step, ((images, labels), row) in enumerate(zip(search.fed, recording.rows, strict=True)):
            if judge:
                judge.row, judge.step = row, step
            macs = macs_of_path(reference.net, row["path"], template.input_size, template.in_channels)
            out = reference.step(images, labels, row["path"], macs, referee=judge)
            out["macs"] = macs
            outputs.append(out)
            kappa = max(kappa, out.get("meta_cancellation", 0.0))
            mismatches += compare_step(step, row, out, reference, recording.initial_meta, kappa, tolerances, ratios)
    finally:
        torch.set_num_threads(threads)
    return reference, outputs, mismatches, judge.ambiguous if judge else []


def _relative(a, b) -> float:
    return abs(float(a) - float(b)) / max(abs(float(b)), 1e-30)


def _meta_grad_allowed(kappa: float, tol: Tolerances) -> float:
    return max(tol.meta_grad_floor, tol.meta_grad_per_kappa * kappa)


def _meta_difference(ours, reference, initial, kappa, tol):
    """The largest difference of the meta network's weights, and what is allowed."""
    theirs = [p.detach().numpy() for p in reference.meta.parameters()]  # weight [1, n], bias [1]
    error = max(np.abs(theirs[0].T - ours[0]).max(), np.abs(theirs[1] - ours[1]).max())
    scale = max(np.abs(ours[0]).max(), np.abs(ours[1]).max())
    moved = max(np.abs(ours[0] - initial[0]).max(), np.abs(ours[1] - initial[1]).max())
    return float(error), float(tol.meta_weights * scale + _meta_grad_allowed(kappa, tol) * moved)


def compare_step(
    step, row, out, reference: ReferenceSearch, initial_meta, kappa: float, tol: Tolerances, ratios=None
) -> list:
    """What differs at one step beyond its tolerance; `kappa`: the largest meta-gradient
    cancellation so far (see Tolerances.meta_grad_per_kappa). `ratios` (a dict) collects the
    largest error / allowed of every figure."""
    found = []

    def exact(figure, ours, theirs):
        if ours != theirs:
            found.append(Mismatch(step, figure, ours, theirs, float("inf"), 0.0))

    def close(figure, ours, theirs, error, allowed):
        if ratios is not None:
            key = figure.split(" ")[0] + " " + figure.split(" ")[-1] if figure.startswith("board") else figure
            ratios[key] = max(ratios.get(key, 0.0), error / allowed)
        if not error <= allowed:  # NaN fails too
            found.append(Mismatch(step, figure, ours, theirs, error, allowed))

    exact("FLOPs of the path", row["macs"], out["macs"])
    exact("distill", row["distill"], out["distill"])
    exact("meta update", row["meta"], out["meta"])
    close("lr", row["lr"], out["lr"], _relative(out["lr"], row["lr"]), 1e-12)
    for figure in ("loss", "ce", "kd"):
        close(figure, float(row[figure]), out[figure], _relative(out[figure], row[figure]), tol.loss)
    close("m", float(row["matching"]), out["matching"], abs(out["matching"] - float(row["matching"])), tol.matching)
    exact("teacher", int(row["teacher"]) if row["distill"] else -1, out["teacher"])
    exact("correct", int(row["correct"]), out["correct"])
    if row["meta"] and out["meta"]:
        ours, theirs = float(row["meta_val_loss"]), out["meta_val_loss"]
        close("meta val loss", ours, theirs, _relative(theirs, ours), tol.meta_val_loss)
        ours, theirs = float(row["meta_matching"]), out["meta_matching"]
        close("meta m", ours, theirs, abs(theirs - ours), tol.matching)
        ours, theirs = float(row["meta_grad_norm"]), out["meta_grad_norm"]
        close(
            "meta grad norm", ours, theirs, _relative(theirs, ours), _meta_grad_allowed(out["meta_cancellation"], tol)
        )
    error, allowed = _meta_difference(row["meta_weights"], reference, initial_meta, kappa, tol)
    close("meta weights", "", "", error, allowed)
    ours_board = [(tuple(int(c) for c in p), a, m) for p, a, m, *_ in row["board"]]
    theirs_board = [(e.path, e.accuracy, e.macs) for e in reference.board.entries]
    exact("board (path, top-1, FLOPs), best first", ours_board, theirs_board)
    if ours_board == theirs_board:
        for k, ((*_, images, probs), entry) in enumerate(zip(row["board"], reference.board.entries)):
            exact(f"board {k} images", True, bool(np.array_equal(images, entry.images.numpy().transpose(0, 2, 3, 1))))
            close(f"board {k} probs", "", "", float(np.abs(probs - entry.probs.numpy()).max()), tol.probs)
    return found


def compare_final(
    recording: Recording, reference: ReferenceSearch, outputs, tol: Tolerances = Tolerances(), ratios=None
) -> list:
    """Every supernet variable (weights and BatchNorm statistics), the supernet optimizer's
    momenta, the meta network and its momentum, after the run."""
    found = []
    search = recording.search
    weight_map = WeightMap(search.supernet, reference.net)
    names = weight_map.names()

    def check(figure, pairs, scales, global_bound, rtol):
        """pairs: name -> (ours, theirs); scales: name -> what the difference is measured against."""
        error = np.sqrt(sum(((a - b) ** 2).sum() for a, b in pairs.values()))
        scale = np.sqrt(sum((s**2).sum() for s in scales.values()))
        if ratios is not None:
            ratios[f"{figure} (L2)"] = error / scale / global_bound
        if not error <= global_bound * scale:
            found.append(Mismatch(None, f"{figure}, all together (L2)", "", "", error / scale, global_bound))
        for name, (a, b) in pairs.items():
            kink = any(layer in name for layer in tol.kink_layers)
            error = np.abs(a - b).max()
            allowed = (tol.kink_rtol if kink else rtol) * np.abs(scales[name]).max() + tol.weights_atol
            if ratios is not None:
                key = f"{figure} per tensor" + (" (kink layers)" if kink else "")
                if error / allowed > ratios.get(key, 0.0):
                    ratios[key], ratios[key + ": worst"] = error / allowed, name
            if not error <= allowed:
                found.append(Mismatch(None, f"{figure} {name}", "", "", float(error), float(allowed)))

    theirs = weight_map.torch_values()
    for figure, variables in (
        ("weights", search.supernet.trainable_variables),
        ("BatchNorm statistics", search.supernet.non_trainable_variables),
    ):
        pairs = {names[v.path]: (v.numpy(), theirs[v.path]) for v in variables}
        moved = {names[v.path]: v.numpy() - recording.initial[v.path] for v in variables}
        check(figure, pairs, moved, tol.weights_global, tol.weights_rtol)
    state = reference.optimizer.state
    buffers = {p: state[p]["momentum_buffer"] for p in state if state[p].get("momentum_buffer") is not None}
    theirs = weight_map.torch_values(buffers)
    optimizer = search.fit_model.path_optimizer
    pairs = {names[v.path]: (m.numpy(), theirs[v.path]) for v, m in zip(optimizer.variables, optimizer.momenta)}
    check("momentum of", pairs, {name: a for name, (a, _) in pairs.items()}, tol.momenta_global, tol.momenta_rtol)
    if int(optimizer.iterations.numpy()) != len(outputs):
        found.append(Mismatch(None, "optimizer steps", int(optimizer.iterations.numpy()), len(outputs), 0, 0))
    kappa = max(o.get("meta_cancellation", 0.0) for o in outputs)
    ours_meta = [v.numpy() for v in search.fit_model.meta.trainable_variables]
    error, allowed = _meta_difference(ours_meta, reference, recording.initial_meta, kappa, tol)
    if ratios is not None:
        ratios["final meta weights"] = error / allowed
    if not error <= allowed:
        found.append(Mismatch(None, "meta weights", "", "", error, allowed))
    # The meta momentum is a decaying sum of the clipped meta gradients: as uncertain as they are.
    ours = [m.numpy() for m in search.fit_model.meta_optimizer.momenta]
    theirs = [reference.meta_optimizer.state[p]["momentum_buffer"].numpy() for p in reference.meta.parameters()]
    error = max(np.abs(theirs[0].T - ours[0]).max(), np.abs(theirs[1] - ours[1]).max())
    allowed = _meta_grad_allowed(kappa, tol) * max(np.abs(v).max() for v in ours)
    if ratios is not None:
        ratios["meta momentum"] = error / allowed
    if not error <= allowed:
        found.append(Mismatch(None, "meta momentum", "", "", float(error), float(allowed)))
    return found
