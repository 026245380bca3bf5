"""Which tf.distribute strategy a run uses, which worker writes results, and what the
replicas demand of the batch (cream_tf.launch starts one process per accelerator)."""

from __future__ import annotations

import os

import tensorflow as tf


def make_strategy() -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy when TF_CONFIG names a cluster, else MirroredStrategy over
    the local GPUs (or the CPU when there is none)."""
    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.MirroredStrategy()


def _cluster(strategy: tf.distribute.Strategy):
    """The strategy's cluster resolver (or None) and its cluster as {task type: addresses}."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return resolver, resolver.cluster_spec().as_dict() if resolver is not None else {}


def workers(strategy: tf.distribute.Strategy) -> int:
    """How many machines (tasks) train together."""
    _, cluster = _cluster(strategy)
    return max(1, sum(len(tasks) for kind, tasks in cluster.items() if kind in ("chief", "worker")))


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this worker writes results: the chief, or worker 0 of a cluster without one."""
    resolver, cluster = _cluster(strategy)
    if not cluster or resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in cluster


def check_batch(batch_size: int, strategy: tf.distribute.Strategy) -> None:
    """The global batch must split evenly over the replicas (each gets batch / replicas)."""
    replicas = strategy.num_replicas_in_sync
    if batch_size < 1 or batch_size % replicas:
        raise ValueError(
            f"data.batch_size={batch_size} does not split evenly over {replicas} replicas; "
            "valid are positive multiples of the replica count."
        )


def barrier(strategy: tf.distribute.Strategy, name: str, hours: float = 168.0) -> None:
    """With several workers, waits until every one of them has called this (the coordination
    service's barrier); returns at once on one machine."""
    if workers(strategy) > 1:
        from tensorflow.python.eager import context

        context.context().wait_at_barrier(f"cream_tf_{name}", int(hours * 3600 * 1000))
