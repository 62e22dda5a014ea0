"""Workarounds for bugs in Keras, TensorFlow and keras-tuner, all in one place.

Each one cites its upstream issue, applies only to the library versions known to have the bug
(`affected(...)`; re-check when upgrading: the tests named in each docstring fail without it), and
is scoped: a context manager that undoes it, a subclass instead of a patch, or a change confined to
one object. Nothing here changes a user's other code in the same process.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import time
from collections.abc import Iterator

from packaging.version import Version


def affected(version: str, first: str, last: str) -> bool:
    """True when `version` lies in [first, last] (last: the newest release checked to have the bug)."""
    v = Version(version).release
    return Version(first).release <= v <= Version(last).release + (99,) * (3 - len(Version(last).release))


# ----------------------------------------------------------------------------- process exit


def exit_before_finalization(code: int) -> None:
    """Ends a process whose work is done before TensorFlow can block its exit; returns where unaffected.

    TensorFlow can deadlock when a tf.data iterator that is still referenced late in a process's
    life is destroyed: the destructor waits for ever for a thread of its pool (tensorflow#21277).
    Seen with TensorFlow 2.21 twice: a resumed `train.py` run wrote every output, printed its last
    line and never ended (blocked in ~IteratorResource during interpreter finalization), and a
    pytest session printed "180 passed" and then blocked in the same destructor during pytest's
    final `gc.collect()`. Callers call this when every file is written and closed and every lock
    released: the streams are flushed and the process leaves with `code`. On unaffected versions
    it returns and the caller exits normally, as it does when TensorFlow was never (or not wholly)
    imported: no iterator exists then, and importing it now would print its start-up noise.
    """
    tf = sys.modules.get("tensorflow")
    if tf is None or not hasattr(tf, "__version__") or not affected(tf.__version__, "2.0", "2.21"):
        return
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


# ----------------------------------------------------------------------------- Python / Keras graphs


@contextlib.contextmanager
def recursion_limit(limit: int) -> Iterator[None]:
    """Raises Python's recursion limit to at least `limit` inside the block, then restores it.

    Keras builds a functional model by walking its graph depth-first with recursion
    (`keras/src/ops/function.py`, `_build_map_helper`), one Python frame per node: ResNet-1202 is
    about 2,000 nodes deep, beyond Python's default limit of 1,000 (keras-team/keras#15596, closed
    without a fix; Keras 3.0-3.15 still recurse). Building and loading such a model need it.
    """
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(max(before, limit))
    try:
        yield
    finally:
        sys.setrecursionlimit(before)


# ----------------------------------------------------------------------------- TensorFlow


def new_mirrored_collective_keys() -> None:
    """Gives the next `MirroredStrategy` collective keys of its own (tensorflow/tensorflow#62790).

    Every MirroredStrategy numbers its all-reduces from the same class-level base, and TensorFlow
    aborts when a key comes back with other shapes, so a second strategy in one process (a
    search's trials, a notebook, a test session) fails. Moving the base, as TensorFlow's own tests
    do, only changes the numbering of strategies created later. TF 2.11-2.21 checked.
    """
    import tensorflow as tf

    if affected(tf.__version__, "2.11", "2.21"):
        tf.distribute.MirroredStrategy._collective_key_base += 100_000


def keras_build_from_a_global_batch(model, dataset) -> None:
    """Builds `model`'s compiled metrics from one global batch of `dataset`, once, so that `fit` and
    `evaluate` under a tf.distribute strategy skip Keras' own build (part of tensorflow/tensorflow#72388).

    Before every fit/evaluate, Keras 3 builds the compiled metrics from the first batch, which it
    first averages across replicas element-wise (`strategy.reduce("MEAN", batch, axis=None)`):
    that fails under MultiWorkerMirroredStrategy, and on one machine whenever the first batch
    does not split evenly across replicas (359 test digits on 2 replicas: "AddN must have the same
    size and shape"). Only shapes matter for the build. Confined to this model object.
    Keras 3.0-3.15 checked (tests/test_train.py::test_run_writes_every_output on 2 replicas).
    """
    import keras

    if not affected(keras.__version__, "3.0", "3.15"):
        return
    with model.distribute_strategy.scope():  # building may create the optimizer's variables
        model._symbolic_build(data_batch=next(iter(dataset.take(1))))
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None


@contextlib.contextmanager
def keras_multi_worker_logs() -> Iterator[None]:
    """Averages Keras 3's scalar logs across workers in a way MultiWorkerMirroredStrategy accepts
    (tensorflow/tensorflow#72388), inside the block only.

    Each step averages the scalar logs with `strategy.reduce("MEAN", v, axis=0)`, which fails on
    scalars ("Invalid reduction dimension 0") under MultiWorkerMirroredStrategy; here they are
    averaged with axis=None. Keras 3.0-3.15 checked (tests/test_train.py::test_two_worker_cluster_...).
    """
    import keras
    import tensorflow as tf

    if not affected(keras.__version__, "3.0", "3.15"):
        yield
        return
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = tf_trainer.reduce_per_replica

    @functools.wraps(original)
    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):
            return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    tf_trainer.reduce_per_replica = reduce_per_replica
    try:
        yield
    finally:
        tf_trainer.reduce_per_replica = original


# ----------------------------------------------------------------------------- keras-tuner


def resumable_grid_oracle():
    """keras-tuner's GridSearchOracle class, able to continue a reloaded search (keras-tuner#1055),
    and to hand out a trial to every worker of a cluster.

    keras-tuner 1.0-1.4.8 does not save the grid's ordered trial list and its queue of trials to
    expand: a reloaded grid search stops at once, or dies with a KeyError after re-running the
    interrupted trial. The subclass rebuilds both from the saved trials
    (tests/test_tune.py::test_interrupted_search_...). Its next configuration also comes only from
    trials that have ended (in case a trial adds hyperparameters), so on a cluster two trials run
    at a time and every other worker waits; this project's space is complete before the first
    trial (the tuner builds the hypermodel once per conditional scope when it starts), so the
    subclass goes on from the last configuration handed out
    (tests/test_tune.py::test_grid_oracle_hands_every_worker_a_trial).
    """
    import keras_tuner
    from keras_tuner.src.tuners import gridsearch

    if not affected(keras_tuner.__version__, "1.0", "1.4.8"):
        return gridsearch.GridSearchOracle
    return _resumable_grid_oracle_class()


@functools.cache
def _resumable_grid_oracle_class():
    from keras_tuner.src.tuners import gridsearch

    class ResumableGridSearchOracle(gridsearch.GridSearchOracle):
        def set_state(self, state):
            super().set_state(state)
            values = {tid: t.hyperparameters.values for tid, t in self.trials.items()}
            order = sorted(values, key=functools.cmp_to_key(lambda a, b: self._compare(values[a], values[b])))
            self._ordered_ids = gridsearch.LinkedList()
            for trial_id in order:
                self._ordered_ids.insert(trial_id)
            self._populate_next = list(self.start_order)

        def populate_space(self, trial_id):
            if not self._populate_next and self.trials:
                values = {tid: t.hyperparameters.values for tid, t in self.trials.items()}
                last = max(values, key=functools.cmp_to_key(lambda a, b: self._compare(values[a], values[b])))
                self._populate_next.append(last)
            return super().populate_space(trial_id)

    return ResumableGridSearchOracle


def allow_repeated_draws(oracle, draws: int) -> None:
    """Lets a keras-tuner oracle draw a configuration already tried up to `draws` times in a row
    before it ends the search (keras-tuner#901: the limit, 20, is no parameter; 1.0-1.4.8).

    A random draw on a small space (or a Hyperband round) repeats configurations often: the
    search ended with configurations left. Draws are cheap; trials are not.
    """
    if hasattr(oracle, "_max_collisions"):
        oracle._max_collisions = max(oracle._max_collisions, draws)


def hyperband_first_round(oracle) -> int:
    """How many configurations the first round of keras-tuner's largest Hyperband bracket draws:
    keras-tuner (1.0-1.4.8) computes it in private methods only (no public API; no upstream issue)."""
    return oracle._get_size(oracle._get_num_brackets() - 1, 0)


def drop_ended_trials_from_retry_queue(oracle, final: tuple[str, ...]) -> None:
    """Keeps a reloaded keras-tuner oracle from running an ended trial again (keras-tuner 1.0-1.4.8).

    `Oracle.end_trial` saves the oracle before it removes the trial from its running ones; where
    nothing saves it afterwards (the chief of a distributed search: trials end through its gRPC
    servicer) the saved state lists the last ended trial as running, and `reload` queues it for a
    retry: a chief started again handed it out again (a diverging one diverged again). Trials
    whose own file gives a `final` status leave the queue
    (tests/test_tune.py::test_a_reloaded_oracle_does_not_retry_the_last_ended_trial).
    """
    import keras_tuner

    if not affected(keras_tuner.__version__, "1.0", "1.4.8"):
        return
    oracle._retry_queue = [
        t for t in oracle._retry_queue if t not in oracle.trials or oracle.trials[t].status not in final
    ]


def give_a_restarted_chief_its_running_trials(oracle, final: tuple[str, ...]) -> None:
    """Lets a chief started again end the trials its workers kept training (keras-tuner 1.4-1.4.8).

    Call it on the chief's reloaded oracle before anything saves it again. Two bugs meet when a
    chief is killed mid-trial and started again while its workers still train (no upstream issue
    found; keras-team/keras-tuner#976, fixed by #977, made a chief reload at all; 1.4.8 read):
    - `Oracle.create_trial` saves the oracle before `Display.on_trial_begin` records the trial's
      start and number (`engine/oracle.py` lines 464-465 and 498-499), so the reloaded display does
      not know the running trials: the worker's EndTrial died in `Display.on_trial_end` with
      `KeyError: '0'` (oracle.py line 185), and the worker saw UNKNOWN and gave up.
    - `Oracle.reload` queues the running trials for a retry by whichever worker asks first
      (oracle.py lines 769-772): on a cluster their own workers still train them, so another
      worker could get a second copy of a trial in training, and a trial its worker ended stayed
      queued (oracle.json: `"retry_queue": ["0"]` after the end) to be handed out again.
    Here each trial the saved oracle lists as running (`ongoing_trials`, by worker id), and that
    is not `final` in its own file, goes back to its worker instead of the queue, with a start
    time (the restart's; the first is lost) and its number
    (tests/test_tune_distributed.py::test_a_chief_killed_mid_trial_comes_back_...).
    """
    import datetime
    import json
    import pathlib

    import keras_tuner

    saved = pathlib.Path(oracle._get_oracle_fname())
    if not affected(keras_tuner.__version__, "1.4", "1.4.8") or not saved.is_file():
        return
    display, now = oracle._display, datetime.datetime.now()
    for tuner_id, trial_id in json.loads(saved.read_text()).get("ongoing_trials", {}).items():
        trial = oracle.trials.get(trial_id)
        if trial is None or trial.status in final:
            continue
        oracle._retry_queue = [t for t in oracle._retry_queue if t != trial_id]
        oracle.ongoing_trials[tuner_id] = trial
        display.trial_start.setdefault(trial_id, now)
        order = oracle.start_order  # keras-tuner numbers a trial by the trials known at its start
        number = order.index(trial_id) + 1 if trial_id in order else len(oracle.trials)
        display.trial_number.setdefault(trial_id, number)
        display.search_start = display.search_start or now


RECONNECT_BACKOFF_MS = 2000  # a worker tries to reach a lost chief at least this often
ORACLE_RPCS = (  # the requests of keras-tuner's OracleClient
    "GetSpace",
    "UpdateSpace",
    "CreateTrial",
    "UpdateTrial",
    "EndTrial",
    "GetTrial",
    "GetBestTrials",
)


def ride_out_a_chief_restart(client, address: str) -> None:
    """Makes a keras-tuner worker's `OracleClient` wait for a chief that comes back, within each
    request's timeout (keras-tuner 1.1-1.4.8; a lost chief, the other side of keras-team/keras-tuner#915).

    Its requests wait for the chief with `wait_for_ready`, which covers a chief not yet up but not
    one lost during a request: that request fails at once with UNAVAILABLE ("Socket closed") and
    the worker gave up on a chief that was restarting. And gRPC's reconnection backoff grows to
    120 s: a chief back after 50 s was answered after 68 s (measured), one back after 200 s of a
    300 s timeout might not be asked again in time.
    Here the client's channel retries every `RECONNECT_BACKOFF_MS` at most, and a request that
    fails with UNAVAILABLE is sent again until its own timeout (each is safe to repeat: a restarted
    chief gives a worker back its running trial, see `give_a_restarted_chief_its_running_trials`)
    (tests/test_tune_distributed.py::test_a_request_cut_by_the_chief_s_death_is_sent_again).
    """
    import grpc
    import keras_tuner
    from keras_tuner.src import protos

    if not affected(keras_tuner.__version__, "1.1", "1.4.8"):
        return
    options = [("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS)]
    stub = protos.get_service_grpc().OracleStub(grpc.insecure_channel(address, options=options))
    for name in ORACLE_RPCS:
        setattr(stub, name, _sent_again_when_cut(getattr(stub, name)))
    client.stub = stub


def _sent_again_when_cut(call):
    import grpc

    def send(request, *, timeout: float, **kwargs):
        deadline = time.monotonic() + timeout
        while True:
            try:
                return call(request, timeout=max(deadline - time.monotonic(), 0.001), **kwargs)
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() >= deadline:
                    raise
            time.sleep(0.5)  # a chief shutting down answers UNAVAILABLE at once: no busy loop

    return send


def pause_when_idle(oracle, seconds: float = 1.0) -> None:
    """Makes a keras-tuner worker wait `seconds` after the chief answers IDLE (keras-tuner 1.0-1.4.8).

    `BaseTuner.search` asks again at once: a worker with nothing to do while the last trials run
    sends the chief requests in a busy loop.
    """
    import keras_tuner

    if not affected(keras_tuner.__version__, "1.0", "1.4.8"):
        return
    create = oracle.create_trial

    def create_trial(tuner_id):
        trial = create(tuner_id)
        if trial.status == "IDLE":
            time.sleep(seconds)
        return trial

    oracle.create_trial = create_trial


# ----------------------------------------------------------------------------- Keras export


def export_each_variable_once(archive) -> None:
    """Makes a `keras.export.ExportArchive` store each variable once (keras-team/keras#23553).

    On the TensorFlow backend, `track(model)` lists the model's `keras.Variable` wrappers while
    the endpoints capture the `tf.Variable`s inside them; TensorFlow's checkpoint de-duplicates by
    object, not by buffer, so every weight is written twice (`variables/N` and
    `_all_variables/N`) and loaded twice by every consumer, TF Serving included. Listing the
    wrapped `tf.Variable`s instead lets TensorFlow store each once (the fix proposed upstream in
    keras-team/keras#23563). Keras 3.0-3.15 checked (tests/test_export.py::test_export_stores_...).
    """
    import keras

    if not affected(keras.__version__, "3.0", "3.15"):
        return
    tracked = archive._tf_trackable
    for name in ("variables", "trainable_variables", "non_trainable_variables"):
        values = [v.value if isinstance(v, keras.Variable) else v for v in getattr(tracked, name)]
        setattr(tracked, name, values)


@contextlib.contextmanager
def keras_tuner_rpc_timeout(seconds: float) -> Iterator[None]:
    """Bounds how long a keras-tuner worker waits for the chief's oracle, inside the block.

    keras-tuner's gRPC client waits up to 60 minutes for every request (`oracle_client.TIMEOUT`,
    raised from none to an hour for keras-team/keras-tuner#990; a silent stall when the chief is
    gone, keras-team/keras-tuner#915). Here it waits `seconds`, then the worker says so. keras-tuner
    1.1-1.4.8 checked (tests/test_tune_distributed.py).
    """
    import keras_tuner

    if not affected(keras_tuner.__version__, "1.1", "1.4.8"):
        yield
        return
    from keras_tuner.src.distribute import oracle_client

    before = oracle_client.TIMEOUT
    oracle_client.TIMEOUT = seconds
    try:
        yield
    finally:
        oracle_client.TIMEOUT = before
