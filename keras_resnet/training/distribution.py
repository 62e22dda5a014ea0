"""tf.distribute strategy selection (TensorFlow-specific).

One code path for every scale: a single CPU or GPU still trains through a `MirroredStrategy`
with one replica, several local devices through `MirroredStrategy`, and a cluster described by
`TF_CONFIG` through `MultiWorkerMirroredStrategy`, where only the chief writes outputs.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from keras_resnet import workarounds
from keras_resnet.config import DISTRIBUTIONS, ConfigError, TrainConfig
from keras_resnet.models import specs


def configure_cpu_devices(n: int) -> None:
    """Splits the physical CPU into `n` logical devices so `MirroredStrategy` gets `n` replicas.

    Must run before the first TensorFlow op; a no-op when the CPU is already split that way
    (e.g. by the test set-up).
    """
    if n <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == n:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError as err:
        raise RuntimeError(
            f"--cpu_devices={n}: TensorFlow is already initialized with "
            f"{len(tf.config.list_logical_devices('CPU'))} CPU device(s); logical devices must be "
            "configured before the first TensorFlow op."
        ) from err


def tf_config() -> dict:
    """The parsed `TF_CONFIG` environment variable ({} when unset)."""
    raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"TF_CONFIG is not valid JSON ({err}): {raw[:200]!r}") from None


def cluster_size() -> int:
    """Number of chief + worker tasks `TF_CONFIG` describes (0 without a cluster)."""
    cluster = tf_config().get("cluster", {})
    return len(cluster.get("chief", [])) + len(cluster.get("worker", []))


def _local_devices() -> list[str]:
    gpus = tf.config.list_logical_devices("GPU")
    return [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]


def make_strategy(distribution: str = "auto") -> tf.distribute.Strategy:
    """Returns the strategy for `distribution` (one of `DISTRIBUTIONS`).

    auto: `multi_worker` when `TF_CONFIG` describes a cluster of two tasks or more, else
    `mirrored`. mirrored: every local GPU, or every logical CPU device when there is no GPU
    (TensorFlow's default would use only the first CPU device). one_device: the first GPU, else
    the CPU. multi_worker: `MultiWorkerMirroredStrategy`, which reads `TF_CONFIG`.
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(
            f"Unknown --distribution {distribution!r}: expected one of {', '.join(DISTRIBUTIONS)}."
        )
    if distribution == "auto":
        distribution = "multi_worker" if cluster_size() > 1 else "mirrored"
    if distribution == "multi_worker":
        if not tf_config().get("cluster"):
            raise ValueError(
                "--distribution=multi_worker needs TF_CONFIG describing the cluster and this task."
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    devices = _local_devices()
    if distribution == "one_device":
        return tf.distribute.OneDeviceStrategy(devices[0])
    # A second MirroredStrategy in one process (a search's trials, a notebook, tests) needs
    # collective keys of its own (tensorflow/tensorflow#62790).
    workarounds.new_mirrored_collective_keys()
    return tf.distribute.MirroredStrategy(devices)


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return num_workers(strategy) > 1


def task(strategy: tf.distribute.Strategy) -> tuple[str | None, int]:
    """(task_type, task_id) of this process; (None, 0) outside a cluster."""
    if not is_multi_worker(strategy):
        return None, 0
    resolver = strategy.cluster_resolver
    return resolver.task_type, int(resolver.task_id or 0)


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """The workers of the strategy's collective group (1 outside a cluster): TF makes its replicas
    the workers' local devices times their number (public attributes; the count itself is private)."""
    return strategy.num_replicas_in_sync // len(strategy.extended.worker_devices)


def worker_index(strategy: tf.distribute.Strategy) -> int:
    """This worker's index among all chief + worker tasks (the chief is 0)."""
    task_type, task_id = task(strategy)
    if task_type is None or task_type == "chief":
        return 0
    has_chief = bool(tf_config().get("cluster", {}).get("chief"))
    return task_id + 1 if has_chief else task_id


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True for the one process that writes outputs: the chief, or worker 0 without a chief."""
    task_type, task_id = task(strategy)
    if task_type is None:
        return True
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and worker_index(strategy) == 0)


def strategy_for(cfg: TrainConfig) -> tf.distribute.Strategy:
    """The strategy of --distribution (after splitting the CPU for --cpu_devices); ConfigError if
    the batch does not split evenly across its replicas, or a replica's share into ghost batches."""
    try:
        configure_cpu_devices(cfg.run.cpu_devices)
        strategy = make_strategy(cfg.run.distribution)
    except (ValueError, RuntimeError) as err:
        raise ConfigError(str(err)) from None
    replicas, batch = strategy.num_replicas_in_sync, cfg.data.batch_size
    if batch % replicas:
        raise ConfigError(
            f"--batch_size={batch} does not divide across {replicas} replicas: use a multiple of "
            f"{replicas} (e.g. {max(replicas, batch // replicas * replicas)})."
        )
    try:
        specs.check_ghost_batch(cfg.model.ghost_batch_size, batch, replicas)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return strategy
