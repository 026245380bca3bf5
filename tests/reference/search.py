"""The Cream search step in PyTorch: the official training loop, with cream_tf's choices as switches.

Transcribed, in this file's own words, from microsoft/Cream (folder Cream/): the loop of
`lib/core/train.py` (`train_epoch`: meta update, teacher pick, distillation loss, optimizer step,
board update), `lib/models/PrioritizedBoard.py` (`select_teacher`, `isUpdate`,
`update_prioritized_board`), `lib/models/MetaMatchingNetwork.py` (`run_update` and its parts),
`lib/utils/util.py` (the optimizer's parameter groups, `cross_entropy_loss_with_soft_target`).
The blocks are timm's (reference.supernet). Every place where cream_tf departs from the released
code on purpose (README, "Where cream_tf departs from the official code") is one field of
`Switches`: `OURS` runs cream_tf's algorithm, `OFFICIAL` the released code's.

The path of each step, its FLOPs and the batch are inputs (the issue's "fed the same batches and
the same sampled paths"); everything else (warm-up, distillation and meta-update flags, learning
rate, teacher, losses, optimizer, meta update, board) is decided here.
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from reference.supernet import TimmSupernet, nchw


@dataclasses.dataclass(frozen=True)
class Switches:
    """cream_tf's choice (the default) or the official code's, one field per difference."""

    # The matching value m: sigmoid of the CHOSEN teacher's score ("chosen"), or the official
    # `select_teacher`'s sigmoid(-score of the LAST entry examined) ("last_negated"; Cream issue 78).
    m_from: str = "chosen"
    # What a new board entry stores: the student's own softmax ("student"), or, once the board is
    # non-empty, the teacher's output on the student's images, as the official code ("teacher").
    board_stores: str = "student"
    # The meta gradient over every student tensor ("all"), or only the first tensor (conv_stem's
    # kernel), as the official `calculate_2nd_gradient` passes it ("first").
    meta_grad_tensors: str = "all"
    # m a constant in the training loss (True), or not detached (False, official): every
    # distillation step then also moves the meta layer, and the student through the board forward.
    detach_m: bool = True
    # Blocks a path skips: untouched ("frozen"), or moved by momentum and weight decay once they
    # have had a gradient ("moving": the official code pins torch 1.2, whose zero_grad() keeps
    # zero gradients, which SGD then applies).
    skipped_blocks: str = "frozen"
    # The simulated student step's learning rate: the supernet's current one ("supernet"), or the
    # meta layer's ("meta", the official `optimizer.param_groups[-1]['lr']`).
    simulated_step_lr: str = "supernet"
    # The meta update's KD step on the student: only simulated ("simulated"), or also applied to
    # the real weights by the supernet optimizer, gradient clipped to 1, and the validation
    # gradient taken at those weights ("applied", official `update_student_weights_only`).
    meta_student_step: str = "simulated"
    # Board scoring: one inference-mode forward of all entries' images ("inference"), or one
    # training-mode forward per entry, BatchNorm on those images and updating its statistics
    # ("train", official: the model stays in train mode).
    board_scoring: str = "inference"
    # Whether the teacher's forward and the meta update's forwards update BatchNorm's running
    # statistics (False: only the student's training forward does; True: official, all run in
    # train mode).
    side_forwards_update_bn: bool = False
    # Warm-up epochs: distillation and admission from epoch `warmup_epochs` on ("exclusive"), or
    # after it ("inclusive": the official `epoch <= META_STA_EPOCH`).
    warmup: str = "exclusive"
    # Board entries of equal accuracy: fewer FLOPs first ("fewer_flops"), or as the official
    # `sorted(board, reverse=True)` over (prec1, prec1, flops, cand, ...): more FLOPs first
    # ("more_flops").
    tie_break: str = "fewer_flops"
    # The meta update's validation loss label-smoothed as the training loss (True, official: it
    # is given the training `loss_fn`) or not (False).
    meta_val_smoothing: bool = False
    # The meta layer's optimizer: its own SGD, momentum, no Nesterov, constant lr ("own"), or the
    # supernet's SGD with its own parameter groups (Nesterov, the lr schedule's factor applied to
    # meta_lr too), as the official `add_weight_decay_supernet` and LambdaLR ("shared").
    meta_optimizer: str = "own"

    def __post_init__(self):
        valid = {
            "m_from": ("chosen", "last_negated"),
            "board_stores": ("student", "teacher"),
            "meta_grad_tensors": ("all", "first"),
            "skipped_blocks": ("frozen", "moving"),
            "simulated_step_lr": ("supernet", "meta"),
            "meta_student_step": ("simulated", "applied"),
            "board_scoring": ("inference", "train"),
            "warmup": ("exclusive", "inclusive"),
            "tie_break": ("fewer_flops", "more_flops"),
            "meta_optimizer": ("own", "shared"),
        }
        for name, values in valid.items():
            if getattr(self, name) not in values:
                raise ValueError(f"{name}={getattr(self, name)!r}; valid: {values}")


OURS = Switches()
OFFICIAL = Switches(
    m_from="last_negated",
    board_stores="teacher",
    meta_grad_tensors="first",
    detach_m=False,
    skipped_blocks="moving",
    simulated_step_lr="meta",
    meta_student_step="applied",
    board_scoring="train",
    side_forwards_update_bn=True,
    warmup="inclusive",
    tie_break="more_flops",
    meta_val_smoothing=True,
    meta_optimizer="shared",
)


@dataclasses.dataclass(frozen=True)
class Settings:
    """The numbers of a search, read from a cream_tf SearchConfig (plain values only)."""

    num_classes: int
    pick_method: str
    board_size: int
    slice: int
    accuracy_gap: float
    warmup_epochs: int
    meta_update_every: int
    meta_lr: float
    meta_momentum: float
    simulated_step_lr: float
    epochs: int
    steps_per_epoch: int
    lr: float
    warmup_lr_epochs: float
    momentum: float
    nesterov: bool
    weight_decay: float
    label_smoothing: float

    @classmethod
    def from_config(cls, config, steps_per_epoch: int) -> Settings:
        c, t = config.cream, config.train
        return cls(
            config.data.num_classes,
            c.pick_method,
            c.board_size,
            c.slice,
            c.accuracy_gap,
            c.warmup_epochs,
            c.meta_update_every,
            c.meta_lr,
            c.meta_momentum,
            c.simulated_step_lr,
            t.epochs,
            steps_per_epoch,
            t.lr,
            t.warmup_lr_epochs,
            t.momentum,
            t.nesterov,
            t.weight_decay,
            t.label_smoothing,
        )


@dataclasses.dataclass
class Entry:
    path: tuple[int, ...]
    accuracy: float  # percent of the batch the path was trained on
    macs: int
    images: torch.Tensor  # [slice, C, H, W]
    probs: torch.Tensor  # [slice, classes]


class Board:
    """The prioritized board (official `PrioritizedBoard.isUpdate` / `update_prioritized_board`)."""

    def __init__(self, size: int, gap: float, tie_break: str):
        self.size, self.gap, self.tie_break = size, gap, tie_break
        self.entries: list[Entry] = []

    def __len__(self):
        return len(self.entries)

    def admits(self, accuracy: float, macs: int) -> bool:
        if len(self.entries) < self.size:
            return True
        last = self.entries[-1]
        return accuracy > last.accuracy + self.gap or (accuracy > last.accuracy and macs < last.macs)

    def offer(self, entry: Entry) -> bool:
        if not self.admits(entry.accuracy, entry.macs):
            return False
        self.entries.append(entry)
        if self.tie_break == "fewer_flops":
            self.entries.sort(key=lambda e: (-e.accuracy, e.macs))
        else:  # sorted((prec1, prec1, flops, cand, ...), reverse=True); cand = [[0], *stages, [0]]
            self.entries.sort(key=lambda e: (e.accuracy, e.macs, e.path), reverse=True)
        del self.entries[self.size :]
        return True


def soft_cross_entropy(target_probs, logits):
    """Per example -sum(target * log_softmax(logits)) (official `cross_entropy_loss_with_soft_target`
    before its mean)."""
    return -(target_probs * F.log_softmax(logits, dim=1)).sum(dim=1)


class ReferenceSearch:
    """The search's state (supernet, meta layer, optimizers, board) and its step.

    `step(images, labels, path, macs)` trains one batch as the official `train_epoch` body does,
    counting epochs and batches itself, and returns the step's figures.
    """

    def __init__(self, net: TimmSupernet, meta: torch.nn.Linear, settings: Settings, switches: Switches = OURS):
        self.net, self.meta, self.s, self.sw = net, meta, settings, switches
        net.train()
        decay = [p for p in net.parameters() if p.dim() > 1]  # conv and dense kernels
        no_decay = [p for p in net.parameters() if p.dim() <= 1]  # BatchNorm parameters, biases
        groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": settings.weight_decay}]
        if switches.meta_optimizer == "shared":
            groups.append({"params": list(meta.parameters()), "weight_decay": 0.0, "meta": True})
        self.optimizer = torch.optim.SGD(groups, lr=settings.lr, momentum=settings.momentum, nesterov=settings.nesterov)
        if switches.meta_optimizer == "shared":
            self.meta_optimizer = self.optimizer
        else:
            self.meta_optimizer = torch.optim.SGD(
                meta.parameters(), lr=settings.meta_lr, momentum=settings.meta_momentum, nesterov=False
            )
        self.board = Board(settings.board_size, settings.accuracy_gap, switches.tie_break)
        self.step_index = 0

    # --- schedule and optimizer ----------------------------------------------------------------

    def learning_rate(self, step: int) -> float:
        """cream_tf's schedule: linear warm-up (`warmup_lr_epochs`), then linear decay to zero
        at the last step (the official LambdaLR's decay, with LR 1, is the same line)."""
        s = self.s
        warm, total = int(s.warmup_lr_epochs * s.steps_per_epoch), s.epochs * s.steps_per_epoch
        if step < warm:
            return s.lr * (step + 1) / warm
        return s.lr * max(0.0, 1.0 - (step - warm) / max(1, total - warm))

    def _set_learning_rates(self, lr: float) -> float:
        meta_lr = self.s.meta_lr * (lr / self.s.lr if self.sw.meta_optimizer == "shared" else 1.0)
        for group in self.optimizer.param_groups:
            group["lr"] = meta_lr if group.get("meta") else lr
        if self.sw.meta_optimizer == "own":
            self.meta_optimizer.param_groups[0]["lr"] = meta_lr
        return meta_lr

    def _zero_grad(self):
        """The official optimizer.zero_grad(): under torch 1.2 it zeroes gradients and keeps them,
        so skipped blocks keep being stepped ("moving"); without a gradient they are not."""
        self.optimizer.zero_grad(set_to_none=self.sw.skipped_blocks == "frozen")

    @contextlib.contextmanager
    def _statistics_kept(self, keep: bool):
        """BatchNorm's running statistics as they were before the block, when `keep`."""
        saved = [b.clone() for b in self.net.buffers()] if keep else None
        try:
            yield
        finally:
            if keep:  # through .data: the student's pending backward saved these buffers
                for buffer, value in zip(self.net.buffers(), saved):
                    buffer.data.copy_(value)

    @contextlib.contextmanager
    def _meta_stepped_through_data(self):
        """The supernet optimizer steps the meta layer (when it holds it, "shared", and the layer
        has a gradient, zeroed or not) without autograd seeing it, as torch 1.2's optimizer, which
        wrote through `.data`: the meta update's graph through m still holds the layer's weights,
        and today's optimizer, writing to them in place, would make its backward refuse. It steps
        aliases of their storage (`.data`: their own version counter) with their state and grads."""
        state, swapped = self.optimizer.state, []
        for group in self.optimizer.param_groups:
            if not group.get("meta"):
                continue
            for i, p in enumerate(group["params"]):
                alias = torch.nn.Parameter(p.data)
                alias.grad = p.grad
                if p in state:
                    state[alias] = state.pop(p)
                group["params"][i] = alias
                swapped.append((group, i, p, alias))
        try:
            yield
        finally:
            for group, i, p, alias in swapped:
                group["params"][i] = p
                if alias in state:
                    state[p] = state.pop(alias)

    # --- the board and the teacher ---------------------------------------------------------------

    def _board_scores(self, path, weights=None):
        """The meta layer's score of every board entry for the student `path`: its softmax on the
        entry's images minus the entry's stored softmax, flattened [slice * classes]."""
        net, entries = self.net, self.board.entries

        def forward(images):
            return net(images, path) if weights is None else functional_call(net, weights, (images, path))

        with contextlib.nullcontext() if not self.sw.detach_m else torch.no_grad():
            if self.sw.board_scoring == "inference":
                net.eval()
                probs = F.softmax(forward(torch.cat([e.images for e in entries])), dim=1)
                net.train()
                probs = probs.view(len(entries), self.s.slice, -1)
            else:  # one training-mode forward per entry, as the official loop
                probs = torch.stack([F.softmax(forward(e.images), dim=1) for e in entries])
            features = (probs - torch.stack([e.probs for e in entries])).reshape(len(entries), -1)
        return self.meta(features)[:, 0]

    def select_teacher(self, path, weights=None, referee=None):
        """(board index of the teacher, m): the best-scoring entry; m per `Switches.m_from`."""
        if self.s.pick_method == "top1":
            return 0, torch.tensor(0.5)
        scores = self._board_scores(path, weights)
        index = int(torch.argmax(scores))  # the first of equal maxima, as the official strict '>'
        if referee is not None:
            index = referee.teacher(index, scores.detach())
        m = torch.sigmoid(scores[index]) if self.sw.m_from == "chosen" else torch.sigmoid(-scores[-1])
        return index, m

    # --- one step ----------------------------------------------------------------------------------

    def step(self, images_nhwc, labels, path, macs: int, referee=None) -> dict:
        """`referee` (optional) may settle the step's two discrete decisions where float32 cannot:
        `referee.teacher(index, scores)` and `referee.correct(count, logits, labels)` return the
        teacher index and the number of correct predictions to go on with."""
        s, sw = self.s, self.sw
        epoch, batch = divmod(self.step_index, s.steps_per_epoch)
        x, y = nchw(images_nhwc), torch.from_numpy(np.asarray(labels).astype(np.int64))
        path = tuple(int(c) for c in path)
        lr = self.learning_rate(self.step_index)
        self._set_learning_rates(lr)
        warm = epoch <= s.warmup_epochs if sw.warmup == "inclusive" else epoch < s.warmup_epochs
        distill = s.pick_method != "none" and not warm and len(self.board) > 0
        meta_now = s.pick_method == "meta" and distill and batch > 0 and batch % s.meta_update_every == 0
        out = {"lr": lr, "distill": distill, "meta": meta_now, "epoch": epoch, "batch": batch}
        if meta_now:
            out.update(self.meta_update(x, y, path, lr))
        index, m = self.select_teacher(path, referee=referee) if distill else (-1, torch.tensor(0.0))
        logits = self.net(x, path)
        ce = F.cross_entropy(logits, y, reduction="none", label_smoothing=s.label_smoothing)
        teacher_logits = None
        if distill:
            with torch.no_grad(), self._statistics_kept(not sw.side_forwards_update_bn):
                teacher_logits = self.net(x, self.board.entries[index].path)
            kd = soft_cross_entropy(F.softmax(teacher_logits, dim=1), logits)
            weight = m.detach() if sw.detach_m else m
            loss = ((weight * kd + (2.0 - weight) * ce) / 2.0).mean()
        else:
            kd = torch.zeros_like(ce)
            loss = ce.mean()
        self._zero_grad()
        if sw.meta_optimizer == "own":
            self.meta_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if sw.meta_optimizer == "own" and not sw.detach_m:
            self.meta_optimizer.step()  # the first-order (KD - CE) / 2 * dm/dtheta of the loss
        correct = int((logits.argmax(dim=1) == y).sum())
        if referee is not None:
            correct = referee.correct(correct, logits.detach(), y)
        accuracy = 100.0 * correct / len(y)
        if not warm:
            stored = teacher_logits if sw.board_stores == "teacher" and len(self.board) > 0 else logits
            entry = Entry(path, accuracy, int(macs), x[: s.slice].clone(), F.softmax(stored[: s.slice].detach(), dim=1))
            out["admitted"] = self.board.offer(entry)
        self.step_index += 1
        out.update(
            loss=float(loss.detach()),
            ce=float(ce.detach().mean()),
            kd=float(kd.detach().mean()),
            matching=float(m.detach()),
            teacher=index,
            correct=correct,
            logits=logits.detach(),
        )
        return out

    # --- the meta update ---------------------------------------------------------------------------

    def meta_update(self, x, y, path, lr) -> dict:
        """Official `MetaMatchingNetwork.run_update`: a KD step of the student on the first slice,
        weighted by m, then the validation loss on the next slice; its gradient with respect to
        the meta layer through the stepped weights updates the meta layer."""
        s, sw, net = self.s, self.sw, self.net
        x1, x2, y2 = x[: s.slice], x[s.slice : 2 * s.slice], y[s.slice : 2 * s.slice]
        meta_params = list(self.meta.parameters())
        before = [p.detach().clone() for p in meta_params]
        params = net.path_parameters(path)
        names = {id(p): n for n, p in net.named_parameters()}
        # The first-order graph is built on copies of the student's weights: the official code
        # steps the real ones in place before it differentiates through that graph (torch 1.2's
        # optimizer writes through `.data`, which autograd does not see).
        copies = {names[id(p)]: p.detach().clone().requires_grad_(True) for p in params}
        smoothing = s.label_smoothing if sw.meta_val_smoothing else 0.0
        index, m = self.select_teacher(path, copies)
        with self._statistics_kept(not sw.side_forwards_update_bn):
            with torch.no_grad():
                teacher = F.softmax(net(x1, self.board.entries[index].path), dim=1)
            kd = m * soft_cross_entropy(teacher, functional_call(net, copies, (x1, path))).mean()
        self._zero_grad()
        grads = torch.autograd.grad(kd, list(copies.values()), create_graph=True)
        meta_lr = self._set_learning_rates(lr)
        if s.simulated_step_lr > 0:
            step_lr = s.simulated_step_lr
        else:
            step_lr = lr if sw.simulated_step_lr == "supernet" else meta_lr
        stepped = [w - step_lr * g for w, g in zip(copies.values(), grads)]
        chosen = range(len(stepped)) if sw.meta_grad_tensors == "all" else [0]
        if sw.meta_student_step == "simulated":
            with self._statistics_kept(not sw.side_forwards_update_bn):
                logits = functional_call(net, dict(zip(copies, stepped)), (x2, path))
            val_loss = F.cross_entropy(logits, y2, label_smoothing=smoothing)
            val_grads = torch.autograd.grad(val_loss, stepped, retain_graph=True)
            if sw.meta_grad_tensors == "all":  # d L(w - lr * grad(m * KD)) / d theta, by autograd
                meta_grads = torch.autograd.grad(val_loss, meta_params, allow_unused=True)
            else:
                meta_grads = torch.autograd.grad(
                    [stepped[i] for i in chosen], meta_params, [val_grads[i] for i in chosen], allow_unused=True
                )
        else:  # official: the KD step applied to the real weights, clipped to norm 1
            for p, g in zip(params, grads):
                p.grad = g.detach().clone()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            with self._meta_stepped_through_data():
                self.optimizer.step()
            for p in params:
                p.grad = None
            with self._statistics_kept(not sw.side_forwards_update_bn):
                val_loss = F.cross_entropy(net(x2, path), y2, label_smoothing=smoothing)
            self._zero_grad()
            val_grads = torch.autograd.grad(val_loss, params)
            meta_grads = torch.autograd.grad(
                [stepped[i] for i in chosen], meta_params, [val_grads[i] for i in chosen], allow_unused=True
            )
        # How much the meta gradient's inner product <grad L, grad KD> cancels: its relative
        # round-off is this times that of the two gradients.
        terms = [(val_grads[i].detach() * grads[i].detach()) for i in chosen]
        cancellation = float(sum(t.abs().sum() for t in terms) / sum(t.sum() for t in terms).abs())
        meta_grads = [torch.zeros_like(p) if g is None else g for g, p in zip(meta_grads, meta_params)]
        for p, g in zip(meta_params, meta_grads):
            p.grad = g.detach().clone()
        norm = float(torch.nn.utils.clip_grad_norm_(meta_params, 1.0))
        self.meta_optimizer.step()
        for p in meta_params:
            p.grad = None
        change = float(torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(meta_params, before))))
        return {
            "meta_val_loss": float(val_loss),
            "meta_matching": float(m),
            "meta_teacher": index,
            "meta_grad_norm": norm,
            "meta_change": change,
            "meta_cancellation": cancellation,
        }
