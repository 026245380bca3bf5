"""The Cream training step, the meta network and its update, under any tf.distribute strategy.

`CreamTrainer.train_step` trains one sampled path on one batch: plain cross-entropy during
warm-up (or with pick_method 'none'), then distillation from the board path the meta network
picks, loss = (m * KD + (2 - m) * CE) / 2 with m the matching value of that teacher.
`CreamTrainer.meta_step` updates the meta network with the closed-form meta gradient.
Both are traced once and serve every path: the path, the learning rate and the board are
tensors, never Python values.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from cream_tf.search.board import PrioritizedBoard
from cream_tf.search.optimizer import PathSGD, decays
from cream_tf.supernet import Supernet


class MetaMatchingNetwork(keras.layers.Layer):
    """Scores a (student, board entry) pair from the difference of their softmax outputs on the
    entry's stored images: one dense unit over the flattened [slice x classes] difference."""

    def __init__(self, slice_size: int, num_classes: int, **kwargs):
        super().__init__(name=kwargs.pop("name", "meta_matching"), **kwargs)
        self.dense = keras.layers.Dense(1, name="meta_dense")
        self.dense.build((None, slice_size * num_classes))

    def call(self, differences):
        """differences: [entries, slice * classes] -> scores [entries]."""
        return self.dense(differences)[:, 0]


def soft_cross_entropy(target_probs, logits):
    return -tf.reduce_sum(target_probs * tf.nn.log_softmax(logits), axis=-1)


class CreamTrainer:
    """Holds the supernet, the meta network, their optimizers and the board's device copy."""

    def __init__(self, supernet: Supernet, config, global_batch_size: int, strategy=None):
        self.strategy = strategy or tf.distribute.get_strategy()
        self.supernet = supernet
        self.cream = config.cream
        self.train = config.train
        self.global_batch_size = global_batch_size
        template = supernet.space.template
        self.num_classes = template.num_classes
        size, s = self.cream.board_size, self.cream.slice
        image_shape = (template.input_size, template.input_size, template.in_channels)
        with self.strategy.scope():
            self.meta = MetaMatchingNetwork(s, self.num_classes)
            variables = supernet.trainable_variables
            groups, self.owners = supernet.groups(variables)
            self.optimizer = PathSGD(variables, groups, decays(variables), self.train.momentum,
                                     self.train.nesterov, self.train.weight_decay, name="supernet_sgd")
            self.meta_optimizer = PathSGD(self.meta.trainable_variables, [[0, 1]], [False, False],
                                          self.cream.meta_momentum, nesterov=False, clip_norm=1.0,
                                          name="meta_sgd")
            # The board as the graph sees it; the host's PrioritizedBoard is the source of truth.
            zeros = lambda shape, dtype="float32": keras.Variable(np.zeros(shape, dtype), trainable=False)  # noqa: E731
            self.board_images = zeros((size, s, *image_shape))
            self.board_probs = zeros((size, s, self.num_classes))
            self.board_paths = zeros((size, supernet.num_positions), "int32")
            self.board_count = zeros((), "int32")
        self.train_step_fn = tf.function(self._distributed_train_step, jit_compile=self.train.jit_compile)
        self.meta_step_fn = tf.function(self._distributed_meta_step)

    # --- board ------------------------------------------------------------------------------

    def load_board(self, board: PrioritizedBoard) -> None:
        """Copies the host board into the variables the graph reads."""
        images, probs, paths = (np.zeros(v.shape, v.dtype) for v in
                                (self.board_images, self.board_probs, self.board_paths))
        for i, entry in enumerate(board.entries):
            images[i], probs[i], paths[i] = entry.images, entry.probs, entry.path
        self.board_images.assign(images)
        self.board_probs.assign(probs)
        self.board_paths.assign(paths)
        self.board_count.assign(len(board))

    def score_board(self, path):
        """Meta scores of every board entry for the student `path` and their input features.

        One batched forward of all entries' images, in inference mode, so an entry's score
        does not depend on which other entries (or empty slots) share the batch.
        """
        size, s = self.cream.board_size, self.cream.slice
        images = tf.reshape(self.board_images, (size * s, *self.board_images.shape[2:]))
        probs = tf.nn.softmax(self.supernet(images, path, training=False))
        features = tf.reshape(probs - tf.reshape(self.board_probs, (size * s, -1)), (size, -1))
        scores = self.meta(tf.stop_gradient(features))
        filled = tf.range(size) < self.board_count
        return tf.where(filled, scores, tf.fill([size], -np.inf)), tf.stop_gradient(features)

    def select_teacher(self, path):
        """(teacher index, matching value m): the best-scoring entry and sigmoid of ITS score.

        (The official code takes the score of the last entry examined, negated; see the README.)
        """
        if self.cream.pick_method == "top1":
            return tf.constant(0), tf.constant(0.5)  # the board is kept sorted, best first
        scores, _ = self.score_board(path)
        index = tf.argmax(scores, output_type=tf.int32)
        return index, tf.sigmoid(scores[index])

    def teacher_probs(self, images, teacher_path):
        # Train-mode forward, as the official code does, but without gradient and without
        # touching the BatchNorm statistics: only the student's step updates state.
        with keras.StatelessScope():
            return tf.stop_gradient(tf.nn.softmax(self.supernet(images, teacher_path, training=True)))

    # --- the training step ------------------------------------------------------------------

    def train_step(self, images, labels, path, lr, distill):
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
        variables = self.optimizer.variables
        with tf.GradientTape() as tape:
            logits = self.supernet(images, path, training=True)
            ce = keras.losses.categorical_crossentropy(onehot, logits, from_logits=True,
                                                       label_smoothing=self.train.label_smoothing)
            kd = tf.where(distill, soft_cross_entropy(teacher, logits), 0.0)
            per_example = tf.where(distill, (m * kd + (2.0 - m) * ce) / 2.0, ce)
            loss = tf.reduce_sum(per_example) / batch  # global-batch mean once summed over replicas
        grads = tape.gradient(loss, variables)
        self.optimizer.apply(grads, self.supernet.used(path, self.owners), lr)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32),
                                                 tf.cast(labels, tf.int32)), tf.float32))
        s = self.cream.slice
        sample_images, sample_probs = images[:s], tf.nn.softmax(logits[:s])
        context = tf.distribute.get_replica_context()
        if context.num_replicas_in_sync > 1:
            # The board takes the first images of the GLOBAL batch, the same on every worker.
            sample_images = context.all_gather(sample_images, axis=0)[:s]
            sample_probs = context.all_gather(sample_probs, axis=0)[:s]
        count = tf.cast(tf.shape(labels)[0], tf.float32)
        return {"loss": loss, "ce": tf.reduce_sum(ce) / batch, "kd": tf.reduce_sum(kd) / batch,
                "matching": m * count / batch, "correct": correct, "count": count,
                "teacher": index, "images": sample_images, "probs": sample_probs}

    def _distributed_train_step(self, images, labels, path, lr, distill):
        outputs = self.strategy.run(self.train_step, args=(images, labels, path, lr, distill))
        return self._reduce(outputs)

    def _reduce(self, outputs):
        reduced = {}
        for key, value in outputs.items():
            if key in ("images", "probs", "teacher"):
                reduced[key] = self.strategy.experimental_local_results(value)[0]
            else:
                reduced[key] = self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
        return reduced

    # --- the meta step ----------------------------------------------------------------------

    def meta_gradient(self, images, labels, path, lr):
        """Closed-form meta gradient for one replica's batch; returns (grads, index, m, val loss).

        The student takes one simulated SGD step on m * KD over the first `slice` images,
        w' = w - lr * m * g with g = grad KD(w); the meta objective is the validation loss
        L(w') on the next `slice` images. m only scales g, so
        dL/dtheta = -lr * <grad L(w'), g> * dm/dtheta: no second derivatives are needed.
        """
        s = self.cream.slice
        x1, x2, y2 = images[:s], images[s:2 * s], labels[s:2 * s]
        scores, features = self.score_board(path)
        index = tf.argmax(scores, output_type=tf.int32)
        teacher = self.teacher_probs(x1, self.board_paths[index])
        variables = self.optimizer.variables
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
            with keras.StatelessScope(state_mapping=list(zip(self.optimizer.variables, values))):
                logits = self.supernet(images, path, training=True)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))
        return loss, tape.gradient(loss, values, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    def meta_step(self, images, labels, path, lr, meta_lr):
        grads, index, m, val_loss = self.meta_gradient(images, labels, path, lr)
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        grads = [g / replicas for g in grads]  # PathSGD sums over replicas: average them
        self.meta_optimizer.apply(grads, [True], meta_lr)
        return {"meta_val_loss": val_loss / replicas, "meta_matching": m / replicas}

    def _distributed_meta_step(self, images, labels, path, lr, meta_lr):
        outputs = self.strategy.run(self.meta_step, args=(images, labels, path, lr, meta_lr))
        return {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in outputs.items()}

    # --- checkpointing ----------------------------------------------------------------------

    def checkpoint_objects(self) -> dict:
        # Keras 3 models do not hand their weights to tf.train.Checkpoint's object graph, so the
        # variables are listed explicitly (in creation order, the same in every run).
        return {"supernet": _Slots(self.supernet.weights), "meta": _Slots(self.meta.weights),
                "optimizer": _Slots(self.optimizer.slots), "meta_optimizer": _Slots(self.meta_optimizer.slots),
                "board": _Slots([self.board_images, self.board_probs, self.board_paths, self.board_count])}


class _Slots(tf.Module):
    """Makes a list of variables one checkpointable object."""

    def __init__(self, variables):
        super().__init__()
        self.variables_list = list(variables)
