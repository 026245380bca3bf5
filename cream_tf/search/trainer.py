"""The Cream training step, the meta network and its update, as a Keras model trained by `fit`.

`SearchModel.train_step` (Keras' hook, driven by `model.fit`) trains one sampled path on one
batch: plain cross-entropy during warm-up (or with pick_method 'none'), then distillation from
the board path the meta network picks, loss = (m * KD + (2 - m) * CE) / 2 with m the matching
value of that teacher. On the steps the host asks for a meta update (one in
`cream.meta_update_every`), `meta_update` first updates the meta network on the same batch with
the closed-form meta gradient (`meta_step`). Each is one traced graph for every path and step:
the path, the learning rate, the distillation flag and the board are variables the host sets
between steps (see cream_tf.search.run), never Python values. The meta update's graph, larger
than the train step's, is built when first needed.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from cream_tf.keras_internals import FitModel, make_step_function
from cream_tf.optim import PathSGD, decays
from cream_tf.search.board import PrioritizedBoard
from cream_tf.supernet import Supernet


class MetaMatchingNetwork(keras.layers.Layer):
    """Scores a (student, board entry) pair from the difference of their softmax outputs on the
    entry's stored images: one dense unit over the flattened [slice x classes] difference.

    Initialized as the official code does (its EfficientNet init with fan-out 1): kernel
    U(-1, 1), bias 0. Keras' default (Glorot, limit sqrt(6 / (slice * classes + 1))) would make
    the scores, and so m, nearly constant for large class counts.
    """

    def __init__(self, slice_size: int, num_classes: int, **kwargs):
        super().__init__(name=kwargs.pop("name", "meta_matching"), **kwargs)
        self.dense = keras.layers.Dense(
            1,
            kernel_initializer=keras.initializers.RandomUniform(-1.0, 1.0),
            bias_initializer="zeros",
            name="meta_dense",
        )
        self.dense.build((None, slice_size * num_classes))

    def call(self, differences):
        """differences: [entries, slice * classes] -> scores [entries]."""
        return self.dense(differences)[:, 0]


def soft_cross_entropy(target_probs, logits):
    return -tf.reduce_sum(target_probs * tf.nn.log_softmax(logits), axis=-1)


class SearchModel(FitModel):
    """The supernet, the meta network, their optimizers and the board's device copy; build it
    inside the strategy's scope, then `compile()` and `fit`.

    Before each step the host calls `set_step(path, lr, distill, meta)`; `train_step` returns
    the step's global figures (loss, ce, kd, matching, correct, count, teacher, meta_*) and the
    board candidate (the first `slice` images of the global batch and the path's softmax on them).
    """

    def __init__(self, supernet: Supernet, config, global_batch_size: int):
        super().__init__(name="cream_trainer")
        self.supernet = supernet
        self.cream = config.cream
        self.train_config = config.train
        self.global_batch_size = global_batch_size
        template = supernet.space.template
        self.num_classes = template.num_classes
        size, s = self.cream.board_size, self.cream.slice
        image_shape = (template.input_size, template.input_size, template.in_channels)
        self.meta = MetaMatchingNetwork(s, self.num_classes)
        variables = supernet.trainable_variables
        groups, self.owners = supernet.groups(variables)
        self.path_optimizer = PathSGD(
            variables,
            groups,
            decays(variables),
            self.train_config.momentum,
            self.train_config.nesterov,
            self.train_config.weight_decay,
            name="supernet_sgd",
        )
        self.meta_optimizer = PathSGD(
            self.meta.trainable_variables,
            [[0, 1]],
            [False, False],
            self.cream.meta_momentum,
            nesterov=False,
            clip_norm=1.0,
            name="meta_sgd",
        )

        def state(shape, dtype="float32"):
            return keras.Variable(np.zeros(shape, dtype), trainable=False)

        # The board as the graph sees it; the host's PrioritizedBoard is the source of truth.
        self.board_images = state((size, s, *image_shape))
        self.board_probs = state((size, s, self.num_classes))
        self.board_paths = state((size, supernet.num_positions), "int32")
        self.board_count = state((), "int32")
        # What the host decides for the next step.
        self.step_path = state((supernet.num_positions,), "int32")
        self.step_lr = state((), "float32")
        self.step_distill = state((), "int32")  # 0/1 flags: int32 variables mirror on any device
        self.meta_now = False  # the host's: does this step update the meta network first?
        self.traces = {"train": 0, "meta": 0}  # per step function; one graph each must serve every step
        self.built = True

    def set_step(self, path, lr: float, distill: bool, meta: bool = False) -> None:
        self.step_path.assign(np.asarray(path, np.int32))
        self.step_lr.assign(np.float32(lr))
        self.step_distill.assign(int(bool(distill)))
        self.meta_now = bool(meta) and self.cream.pick_method == "meta"

    def make_train_function(self, force=False):
        """Keras' hook: two compiled functions, the train step and the meta update, and the
        host's `set_step(meta=...)` says whether a step runs the meta update first, on the same
        batch.

        As one graph with the meta update under a condition, every start built both (the meta
        update's forwards and backwards are most of it) before the first step, though it runs once
        in `meta_update_every` steps and never before the board fills. Both are made by Keras' own
        step-function maker (cream_tf.keras_internals.make_step_function): given batches rather
        than an iterator it runs its step on each, so `fit`, `train_on_batch` and the strategies
        drive them as any train step; the batch is drawn here, outside the graphs.
        """
        if self.train_function is not None and not force:
            return self.train_function
        train, meta = make_step_function(self, self.train_step), make_step_function(self, self.meta_update)

        def train_function(iterator):
            batch = [next(iterator)]
            updated = meta(batch) if self.meta_now else {}
            return {**updated, **train(batch)}

        self.train_function = train_function
        return train_function

    # --- board ------------------------------------------------------------------------------

    def load_board(self, board: PrioritizedBoard) -> None:
        """Copies the host board into the variables the graph reads."""
        images, probs, paths = (
            np.zeros(v.shape, v.dtype) for v in (self.board_images, self.board_probs, self.board_paths)
        )
        for i, entry in enumerate(board.entries):
            images[i], probs[i], paths[i] = entry.images, entry.probs, entry.path
        self.board_images.assign(images)
        self.board_probs.assign(probs)
        self.board_paths.assign(paths)
        self.board_count.assign(len(board))

    def board_features(self, path):
        """The meta network's input for every board entry and the student `path`: the
        difference of their softmax outputs on the entry's stored images, [entries, slice * classes].

        One batched forward of all entries' images, in inference mode, so an entry's features
        do not depend on which other entries (or empty slots) share the batch.
        """
        size, s = self.cream.board_size, self.cream.slice
        images = tf.reshape(self.board_images, (size * s, *self.board_images.shape[2:]))
        probs = tf.nn.softmax(self.supernet(images, path, training=False))
        return tf.stop_gradient(tf.reshape(probs - tf.reshape(self.board_probs, (size * s, -1)), (size, -1)))

    def board_scores(self, features):
        """Meta scores of the board entries from their features; -inf for empty slots."""
        size = self.cream.board_size
        filled = tf.range(size) < self.board_count
        return tf.where(filled, self.meta(features), tf.fill([size], -np.inf))

    def select_teacher(self, path):
        """(teacher index, matching value m) for the student `path`: the board entry whose
        features score best, and sigmoid of ITS score.

        (The official code takes the score of the last entry examined, negated; see the README.)
        """
        if self.cream.pick_method == "top1":
            return tf.constant(0), tf.constant(0.5)  # the board is kept sorted, best first
        scores = self.board_scores(self.board_features(path))
        index = tf.argmax(scores, output_type=tf.int32)
        return index, tf.sigmoid(scores[index])

    def teacher_probs(self, images, teacher_path):
        # Train-mode forward, as the official code does, but without gradient and without
        # touching the BatchNorm statistics: only the student's step updates state.
        with keras.StatelessScope():
            return tf.stop_gradient(tf.nn.softmax(self.supernet(images, teacher_path, training=True)))

    # --- the training step ------------------------------------------------------------------

    def train_step(self, data):
        """Keras' hook: the distillation step (see `distill_step`)."""
        self.traces["train"] += 1
        images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        path, lr, distill = self.step_path.value, self.step_lr.value, self.step_distill.value > 0
        return self.step_outputs(self.distill_step(images, labels, path, lr, distill))

    def meta_update(self, data):
        """The meta step on the batch `data`, run before that batch's train step when the host
        asks for it: on the weights before the step's update, as the official order."""
        self.traces["meta"] += 1
        images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        path, lr = self.step_path.value, self.step_lr.value
        return self.step_outputs(self.meta_step(images, labels, path, lr))

    def distill_step(self, images, labels, path, lr, distill):
        """One replica's part of a step. `distill` is a boolean tensor, so warm-up and
        distillation share one traced graph; the teacher is only run when it is true."""
        batch = tf.cast(self.global_batch_size, tf.float32)
        onehot = tf.one_hot(labels, self.num_classes)

        def with_teacher():
            index, m = self.select_teacher(path)
            return index, tf.stop_gradient(m), self.teacher_probs(images, self.board_paths[index])

        def without_teacher():
            return tf.constant(-1), tf.constant(0.0), tf.zeros_like(onehot)

        if self.cream.pick_method == "none":
            index, m, teacher = without_teacher()
        else:
            # m is a constant here: the meta network learns only from the meta step.
            index, m, teacher = tf.cond(distill, with_teacher, without_teacher)
        variables = self.path_optimizer.variables
        with tf.GradientTape() as tape:
            logits = self.supernet(images, path, training=True)
            ce = keras.losses.categorical_crossentropy(
                onehot, logits, from_logits=True, label_smoothing=self.train_config.label_smoothing
            )
            kd = tf.where(distill, soft_cross_entropy(teacher, logits), 0.0)
            per_example = tf.where(distill, (m * kd + (2.0 - m) * ce) / 2.0, ce)
            loss = tf.reduce_sum(per_example) / batch  # global-batch mean once summed over replicas
        grads = tape.gradient(loss, variables)
        self.path_optimizer.apply(grads, self.supernet.used(path, self.owners), lr)
        correct = tf.reduce_sum(
            tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), tf.cast(labels, tf.int32)), tf.float32)
        )
        s = self.cream.slice
        sample_images, sample_probs = images[:s], tf.nn.softmax(logits[:s])
        context = tf.distribute.get_replica_context()
        if context.num_replicas_in_sync > 1:
            # The board takes the first images of the GLOBAL batch, the same on every worker.
            sample_images = context.all_gather(sample_images, axis=0)[:s]
            sample_probs = context.all_gather(sample_probs, axis=0)[:s]
        count = tf.cast(tf.shape(labels)[0], tf.float32)
        # Every replica returns the global figures (Keras averages what replicas return).
        figures = _global_sums(
            {
                "loss": loss,
                "ce": tf.reduce_sum(ce) / batch,
                "kd": tf.reduce_sum(kd) / batch,
                "matching": m * count / batch,
                "correct": correct,
                "count": count,
            }
        )
        return {**figures, "teacher": index, "images": sample_images, "probs": sample_probs}

    # --- the meta step ----------------------------------------------------------------------

    def meta_gradient(self, images, labels, path, lr):
        """Closed-form meta gradient for one replica's batch; returns (grads, index, m, val loss).

        The student takes one simulated SGD step on m * KD over the first `slice` images,
        w' = w - lr * m * g with g = grad KD(w); the meta objective is the validation loss
        L(w') on the next `slice` images. m only scales g, so
        dL/dtheta = -lr * <grad L(w'), g> * dm/dtheta: no second derivatives are needed.
        """
        s = self.cream.slice
        x1, x2, y2 = images[:s], images[s : 2 * s], labels[s : 2 * s]
        features = self.board_features(path)
        index = tf.argmax(self.board_scores(features), output_type=tf.int32)
        teacher = self.teacher_probs(x1, self.board_paths[index])
        variables = self.path_optimizer.variables
        with keras.StatelessScope():  # the meta step's forwards leave BatchNorm statistics alone
            with tf.GradientTape() as tape:
                kd = tf.reduce_mean(soft_cross_entropy(teacher, self.supernet(x1, path, training=True)))
            # Zeros for weights the path skips (eagerly, switch_case never runs their branch).
            g = [tf.zeros_like(v) if d is None else d for d, v in zip(tape.gradient(kd, variables), variables)]
        with tf.GradientTape() as meta_tape:
            m = tf.sigmoid(self.meta(features[index][None])[0])
        updated = [v - lr * m * d for v, d in zip(variables, g)]
        val_loss, val_grads = self.validation_loss(x2, y2, path, updated)
        inner = tf.add_n([tf.reduce_sum(a * b) for a, b in zip(val_grads, g)])
        grads = meta_tape.gradient(m, self.meta.trainable_variables, output_gradients=-lr * inner)
        return grads, index, m, val_loss

    def validation_loss(self, images, labels, path, values):
        """Cross-entropy of `path` with the supernet's trainable weights replaced by `values`,
        and its gradient with respect to those values."""
        with tf.GradientTape() as tape:
            tape.watch(values)
            with keras.StatelessScope(state_mapping=list(zip(self.path_optimizer.variables, values))):
                logits = self.supernet(images, path, training=True)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))
        return loss, tape.gradient(loss, values, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    def meta_step(self, images, labels, path, lr):
        """Updates the meta network from this replica's batch."""
        if self.cream.simulated_step_lr > 0:  # the official code steps with the meta network's own lr
            lr = tf.constant(self.cream.simulated_step_lr, tf.float32)
        grads, _, m, val_loss = self.meta_gradient(images, labels, path, lr)
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        grads = [g / replicas for g in grads]  # PathSGD sums over replicas: average them
        before = [tf.identity(v) for v in self.meta.trainable_variables]
        norm = self.meta_optimizer.apply(grads, [True], self.cream.meta_lr)
        after = self.meta.trainable_variables
        # Every replica holds the same meta network and the same reduced norm: report one copy.
        return {
            **_global_sums({"meta_val_loss": val_loss / replicas, "meta_matching": m / replicas}),
            "meta_grad_norm": norm,
            "meta_norm": tf.linalg.global_norm(after),
            "meta_change": tf.linalg.global_norm([a - b for a, b in zip(after, before)]),
        }


def _global_sums(values: dict) -> dict:
    """Sums per-replica partial figures over the replicas, in the replica context."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return values
    return context.all_reduce(tf.distribute.ReduceOp.SUM, values)
