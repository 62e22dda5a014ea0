"""The training procedure: one run of a `TrainConfig`, from refusing bad input to summary.json (TensorFlow).

    summary = training.run(TrainConfig(model="resnet20", model_dir="/tmp/run", train_steps=64000))

`run` is the one path every run takes, whoever starts it: `train.py`, a keras-tuner trial
(`tuning`, with its own model_dir, no test set and extra callbacks) and the paper's experiments
(`reproduce`). In order:

1. check the flags, the saved configuration of --model_dir (a finished run returns its summary),
   the strategy and the batch; prove every output location writable and lock --model_dir;
2. load the data (`data.load`), build and compile the model inside the strategy's scope
   (`models`, `optimization`), with its weight average and test-time views if asked for;
3. restore the newest sound checkpoint, then `model.fit` with the callbacks (`callbacks`) until
   exactly the requested step, checkpointing on Ctrl-C/SIGTERM;
4. score the final model, save `model.keras` (the average's weights when averaging), export it
   for TF Serving (`serving`) and write `summary.json`, last, as the mark of a finished run.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pathlib
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import keras
import tensorflow as tf

from keras_resnet import counting, data, distribute, files, models, optimization, runtime, workarounds
from keras_resnet.callbacks import Checkpointer, WeightAverage, duration, global_step, make_callbacks
from keras_resnet.config import ConfigError, TrainConfig, check_config, check_model_dir, run_length


class TrainingStopped(RuntimeError):
    """Training ended early (interrupted, or the loss diverged); the message says how to go on."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


# ----------------------------------------------------------------------------- signals


class StopSignals:
    """The first SIGINT or SIGTERM asks the run (or search) to stop after its current step with a
    checkpoint; a second one kills the process.

    Installed for the outermost `handling()` block only, in the main thread, and restored after
    it, so a user's own handlers come back. Handling SIGINT explicitly also covers processes
    started in the background by a shell, which would otherwise ignore it.
    """

    def __init__(self):
        self.requested: str | None = None
        self._depth = 0
        self._previous: dict[int, Any] = {}

    @contextlib.contextmanager
    def handling(self) -> Iterator[StopSignals]:
        if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
            yield self
            return
        if self._depth == 0:
            self.requested = None
            self._previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
            for s in self._previous:
                signal.signal(s, self._handle)
        self._depth += 1
        try:
            yield self
        finally:
            self._depth -= 1
            if self._depth == 0:
                for s, h in self._previous.items():
                    signal.signal(s, h)

    def _handle(self, signum, frame) -> None:
        if self.requested:  # the second signal: die as the signal's default action says
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.requested = signal.Signals(signum).name
        print(
            f"\n{self.requested}: checkpointing after this step, then stopping (again to kill)...", flush=True
        )


STOP = StopSignals()


# ----------------------------------------------------------------------------- pieces


# bfloat16 must beat float32 by this much for `--precision=auto` to take it: float32 is the more
# accurate of the two, so a near tie goes to it.
BFLOAT16_MIN_SPEEDUP = 1.15


def resolve_precision(precision: str) -> str:
    """float32 or bfloat16; `auto` is bfloat16 where the hardware computes it natively and faster.

    That is a GPU of compute capability 8.0 or more, or a CPU whose flags claim bfloat16
    (AVX512_BF16 or AMX) and on which a convolution of ResNet-20's first stage, forward and
    backward, measures at least `BFLOAT16_MIN_SPEEDUP` (1.15x) faster in bfloat16 than in
    float32: the flag alone is no promise (an AMD EPYC with AVX512_BF16 trains ResNet-20 1.45x
    faster in bfloat16, an Intel Xeon with AVX512_BF16 but no AMX 0.67x as fast). The
    measurement takes about half a second, once per process; each worker of a cluster decides
    for itself, which changes speed, not results' meaning (variables and gradients stay float32
    either way).
    """
    if precision != "auto":
        return precision
    for gpu in tf.config.list_physical_devices("GPU"):
        if tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0)) >= (8, 0):
            return "bfloat16"
    if not runtime.cpu_claims_bfloat16():
        return "float32"
    return "bfloat16" if bfloat16_speedup() >= BFLOAT16_MIN_SPEEDUP else "float32"


@functools.cache
def bfloat16_speedup(batch: int = 64, repeats: int = 10) -> float:
    """float32 time over bfloat16 time of a 3x3 convolution, 16 channels at 32 px, forward and backward.

    Both run twice before the clock starts (tracing, oneDNN's kernel choice), then alternately;
    each keeps its fastest time.
    """

    def make_step(dtype: tf.DType) -> Callable[[], Any]:
        x = tf.cast(tf.random.stateless_normal([batch, 32, 32, 16], seed=(0, 1)), dtype)
        # A tensor, not a variable: callers may be inside a strategy's scope (the tuner), where a
        # variable would be a distributed one.
        w = tf.cast(tf.random.stateless_normal([3, 3, 16, 16], seed=(0, 2)), dtype)

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                tape.watch([x, w])
                loss = tf.reduce_sum(tf.nn.conv2d(x, w, 1, "SAME"))
            return tape.gradient(loss, [x, w])

        return step

    with tf.device("/cpu:0"):
        steps = [make_step(tf.float32), make_step(tf.bfloat16)]
        best = [float("inf")] * 2
        for i in range(2 + repeats):
            for k, step in enumerate(steps):
                begin = time.perf_counter()
                step()
                if i >= 2:
                    best[k] = min(best[k], time.perf_counter() - begin)
    return best[0] / best[1]


@contextlib.contextmanager
def precision_policy(precision: str) -> Iterator[str]:
    """Sets Keras' global dtype policy for `precision` inside the block, then restores the caller's."""
    before = keras.mixed_precision.global_policy()
    resolved = resolve_precision(precision)
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if resolved == "bfloat16" else "float32")
    try:
        yield resolved
    finally:
        keras.mixed_precision.set_global_policy(before)


def make_strategy(cfg: TrainConfig) -> tf.distribute.Strategy:
    """The strategy for --distribution (after splitting the CPU for --cpu_devices)."""
    try:
        distribute.configure_cpu_devices(cfg.cpu_devices)
        strategy = distribute.make_strategy(cfg.distribution)
    except (ValueError, RuntimeError) as err:
        raise ConfigError(str(err)) from None
    replicas = strategy.num_replicas_in_sync
    if cfg.batch_size % replicas:
        raise ConfigError(
            f"--batch_size={cfg.batch_size} does not divide across {replicas} replicas: use a multiple of "
            f"{replicas} (e.g. {max(replicas, cfg.batch_size // replicas * replicas)})."
        )
    return strategy


def load_data(cfg: TrainConfig, strategy: tf.distribute.Strategy, start_step: int = 0) -> data.Datasets:
    """The datasets of --dataset, sharded for this worker: infinite global batches from `start_step`
    on, validation, test."""
    try:
        return data.load(
            cfg.dataset,
            data_dir=cfg.data_dir or None,
            download=cfg.download,
            batch_size=cfg.batch_size,
            eval_batch_size=cfg.eval_batch_size or None,
            validation_split=cfg.validation_split,
            seed=cfg.seed,
            start_step=start_step,
            deterministic=cfg.deterministic,
            image_size=cfg.image_size or None,
            color_augmentation=cfg.color_augmentation,
            flip=cfg.flip,
            translate=cfg.translate,
            cutout=cfg.cutout,
            low_res_size=cfg.low_res_size,
            low_res_epochs=cfg.low_res_epochs,
            skip_corrupt=cfg.skip_corrupt,
            # Each worker reads its own shard; batches stay global (tf.distribute splits them).
            num_workers=distribute.num_workers(strategy),
            worker_index=distribute.worker_index(strategy),
            verbose=distribute.is_chief(strategy),
        )
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(f"--dataset={cfg.dataset}: {err}") from None


def build_model(cfg: TrainConfig, info: data.DataInfo) -> keras.Model:
    """The network of --model for `info`'s classes and image size (call inside strategy.scope())."""
    model = models.build_model(
        cfg.model,
        shortcut=cfg.resolved_shortcut,
        num_classes=info.num_classes,
        input_shape=(info.image_size, info.image_size, 3),
        weight_decay=cfg.weight_decay,
        family=cfg.family or None,
        bottleneck_stride=cfg.bottleneck_stride,
        sync_bn=cfg.sync_bn,
        fused_bn=cfg.fused_bn,
        zero_init_residual=cfg.zero_init_residual,
        padding=cfg.padding,
    )
    if cfg.low_res_size:
        # The first --low_res_epochs feed smaller images. The weights take any size (convolutions
        # and global average pooling); only the declared input shape must not refuse them. The
        # relaxed check is not saved: the saved and exported model keeps its declared size.
        model.input_spec = keras.InputSpec(ndim=4, axes={-1: model.input_shape[-1]})
    return model


@contextlib.contextmanager
def _outputs(cfg: TrainConfig, writes: bool) -> Iterator[None]:
    """Proves --model_dir and --export_dir writable and holds --model_dir's lock for the block.

    A --model_dir this call created is removed again if the run stops before writing into it.
    """
    if not writes:
        yield
        return
    model_dir = pathlib.Path(cfg.model_dir)
    created = not model_dir.exists()
    try:
        files.check_writable(model_dir, "--model_dir")
        if cfg.export_dir:
            files.check_writable(cfg.export_dir, "--export_dir")
        lock = files.DirLock(model_dir, purpose="train.py run").acquire()
    except (files.NotWritable, files.Locked) as err:
        raise ConfigError(str(err)) from None
    try:
        yield
    except BaseException:
        if created and {p.name for p in model_dir.iterdir()} <= {files.LOCK_FILE}:
            shutil.rmtree(model_dir, ignore_errors=True)
        raise
    finally:
        lock.release()


def _finished(cfg: TrainConfig) -> dict | None:
    if not check_model_dir(cfg):
        return None
    summary = json.loads((pathlib.Path(cfg.model_dir) / "summary.json").read_text())
    print(
        f"{cfg.model_dir} holds a finished run of this configuration (test error "
        f"{_percent(summary.get('test_error'))}); nothing to do.",
        flush=True,
    )
    return summary


def resumes_at(model_dir: str | os.PathLike) -> int:
    """The step a run in `model_dir` resumes from: its newest checkpoint's (0 if it has none)."""
    newest = Checkpointer(pathlib.Path(model_dir) / "checkpoints", verbose=False).candidates()
    return int(newest[0]["step"]) if newest else 0


def _percent(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.2%}"


# ----------------------------------------------------------------------------- run


def run(
    cfg: TrainConfig,
    *,
    verbose: int | str = "auto",
    callbacks: Sequence[keras.callbacks.Callback] = (),
    score_test: bool = True,
) -> dict[str, Any]:
    """Trains (or resumes) the run `cfg` describes; returns the summary also written to summary.json.

    Args:
        cfg: the run; its model_dir holds every output.
        verbose: Keras' progress bar (1) or one line per minute (0); "auto": a bar on a terminal.
        callbacks: extra Keras callbacks, run after the run's own.
        score_test: evaluate the test set (a tuning trial must not see it; then
            `summary["test_error"]` is None).

    Raises:
        ConfigError: bad flags, an unusable output location, a --model_dir in use or holding a
            different run, missing data (nothing was trained).
        TrainingStopped: interrupted (checkpoint written) or diverged (last good checkpoint kept).
    """
    check_config(cfg)
    if summary := _finished(cfg):
        return summary
    start = time.time()
    strategy = make_strategy(cfg)
    chief = distribute.is_chief(strategy)
    with _outputs(cfg, writes=chief), STOP.handling(), precision_policy(cfg.precision) as precision:
        # Re-checked under the lock: another run may have finished it meanwhile.
        if summary := _finished(cfg):
            return summary
        return _train(cfg, strategy, chief, precision, start, verbose, tuple(callbacks), score_test)


def _train(cfg, strategy, chief, precision, start, verbose, extra, score_test) -> dict[str, Any]:
    model_dir = pathlib.Path(cfg.model_dir)
    # Saving may involve collectives every worker must join, so the other workers write too: into
    # a scratch directory that goes away at the end.
    scratch = None if chief else pathlib.Path(tempfile.mkdtemp(prefix="keras_resnet_worker_"))
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 0
    try:
        keras.utils.set_random_seed(cfg.seed)
        if cfg.deterministic:
            tf.config.experimental.enable_op_determinism()
        if chief:
            files.remove_stale_temporaries(model_dir)
            files.remove_stale_temporaries(model_dir / "checkpoints")
        # A resumed run must not replay the batches (and augmentations) it started with.
        datasets = load_data(cfg, strategy, start_step=resumes_at(model_dir))
        info = datasets.info
        total_steps, steps_per_epoch, epochs = run_length(cfg, datasets.steps_per_epoch)
        if chief:
            files.write_json(model_dir / "config.json", cfg.to_json())
            files.write_text(model_dir / "flags.cfg", cfg.to_flags())
            info.save(model_dir)
        with strategy.scope():
            model = optimization.compile_model(build_model(cfg, info), cfg, total_steps)
            average = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay else None
            evaluated = models.with_test_time_augmentation(average.average if average else model, cfg.tta)
            if evaluated is not model:
                optimization.compile_for_evaluation(evaluated, cfg)
        counts = counting.count(model)
        run_callbacks = make_callbacks(
            cfg,
            model,
            total_steps=total_steps,
            evaluated=evaluated,
            validation=datasets.validation,
            test=datasets.test if score_test else None,
            average=average,
            scratch_dir=scratch,
            verbose=chief,
            intra_epoch_log=not verbose,
            extra=extra,
            steps_per_epoch=datasets.steps_per_epoch,
        )
        checkpointer, progress, history = (
            run_callbacks.checkpointer,
            run_callbacks.progress,
            run_callbacks.history,
        )
        checkpointer.stop_requested = lambda: STOP.requested is not None
        with strategy.scope():  # restoring may build the optimizer's variables
            try:
                initial_epoch = checkpointer.restore(model)
            except RuntimeError as err:
                raise ConfigError(f"--model_dir={cfg.model_dir}: {err}") from None
        if chief:
            print(
                _header(
                    cfg,
                    model,
                    counts,
                    info,
                    datasets,
                    precision,
                    strategy,
                    total_steps,
                    steps_per_epoch,
                    checkpointer.restored_step,
                ),
                flush=True,
            )
        if STOP.requested:
            raise TrainingStopped(
                f"{STOP.requested} before training started; nothing was trained.", exit_code=130
            )
        with _distributed(strategy, model, evaluated, datasets.test):
            model.fit(
                datasets.train,
                epochs=epochs,
                initial_epoch=initial_epoch,
                steps_per_epoch=steps_per_epoch,
                shuffle=False,  # the dataset shuffles itself
                callbacks=run_callbacks.ordered(),
                verbose=verbose if chief else 0,
            )
            step = global_step(model)
            _stopped_early(checkpointer, step, total_steps)
            last = history.rows[-1] if history.rows else {}
            test = None
            if score_test:
                if last.get("test_error") not in (None, "") and int(last.get("step", -1)) == step:
                    test = {k[len("test_") :]: float(v) for k, v in last.items() if k.startswith("test_")}
                else:
                    test = evaluated.evaluate(datasets.test, verbose=0, return_dict=True)
        summary = {
            "model": model.name,
            "dataset": info.name,
            "shortcut": cfg.resolved_shortcut if cfg.spec.residual else None,
            "test_error": float(test["error"]) if test else None,
            "test_loss": float(test["loss"]) if test else None,
            **({"test_top5_error": float(test["top5_error"])} if test and "top5_error" in test else {}),
            "val_error": float(last["val_error"]) if last.get("val_error") not in (None, "") else None,
            "train_error": float(last["error"]) if last.get("error") not in (None, "") else None,
            "params": counts.params,
            "macs": counts.macs,
            "steps": step,
            "total_steps": total_steps,
            "batch_size": cfg.batch_size,
            "epochs": step * cfg.batch_size / info.train_examples,
            "train_examples": info.train_examples,
            "test_examples": datasets.test_examples,
            "weight_average": bool(average),
            "tta": cfg.tta,
            "wall_time_s": time.time() - start,  # this invocation (a resumed run counts from its restart)
            "train_time_s": progress.train_time,
            "images_per_sec": progress.images_per_sec(),
            "resumed_from_step": checkpointer.restored_step,
            "replicas": strategy.num_replicas_in_sync,
            "workers": distribute.num_workers(strategy),
            "precision": precision,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        }
        if average:  # what is saved, exported and was scored: the average
            model.set_weights(average.average.get_weights())
        with files.replacing((scratch or model_dir) / "model.keras") as tmp:
            model.save(tmp)
        if cfg.export_dir and chief:
            from keras_resnet import serving  # the TF Serving code is only needed here

            exported = serving.export(model, info, cfg.export_dir, tta=cfg.tta)
            summary["export_path"] = str(exported)
            print(f"exported for TF Serving: {exported}", flush=True)
            image, label = datasets.test_example(0)
            print(serving.example_prediction(exported, image, info.class_names[label]), flush=True)
        if chief:
            # Written last: its presence marks a finished run.
            files.write_json(model_dir / "summary.json", summary)
            print(
                f"done: test error {_percent(summary['test_error'])} after {step} steps in "
                f"{duration(summary['wall_time_s'])} ({summary['images_per_sec']:.0f} img/s); outputs in "
                f"{model_dir} (model.keras, history.csv, curves.png, summary.json)",
                flush=True,
            )
        if STOP.requested:
            # Asked to stop at the last step or after it: the run is complete, and whoever runs
            # several (reproduce, a search, a script) must still stop.
            raise TrainingStopped(
                f"{STOP.requested} after the last step: the run is complete ({model_dir}/summary.json).",
                exit_code=130,
            )
        return summary
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def _header(
    cfg, model, counts, info, datasets, precision, strategy, total_steps, steps_per_epoch, resumed
) -> str:
    """The first line of a run: what trains on what, how, and where it starts."""
    shortcut = f", shortcut {cfg.resolved_shortcut}" if cfg.spec.residual else ""
    sizes = f"{info.train_examples:,} train"
    if datasets.validation_examples:
        sizes += f" / {datasets.validation_examples:,} validation"
    sizes += f" / {datasets.test_examples:,} test images"
    workers = distribute.num_workers(strategy)
    where = f"{strategy.num_replicas_in_sync} replica(s)" + (f" on {workers} workers" if workers > 1 else "")
    start = f"resuming at step {resumed}" if resumed else "starting"
    px = f"{info.image_size} px"
    if cfg.low_res_size:
        px += f", the first {cfg.low_res_epochs} epochs resized to {cfg.low_res_size} px"
    return (
        f"Training {model.name} ({counts.params:,} parameters, {counts.macs / 1e6:,.1f}M multiply-adds"
        f"{shortcut}) on {info.name} ({sizes}, {info.num_classes} classes, {px}), "
        f"{precision}, {where}: {total_steps:,} steps of {cfg.batch_size} ({steps_per_epoch} per epoch); "
        f"{start}; outputs in {cfg.model_dir}"
    )


@contextlib.contextmanager
def _distributed(strategy, trained: keras.Model, evaluated: keras.Model, batches) -> Iterator[None]:
    """Library workarounds for fit/evaluate on several replicas or workers (`workarounds`)."""
    if strategy.num_replicas_in_sync > 1 or distribute.is_multi_worker(strategy):
        for model in {id(trained): trained, id(evaluated): evaluated}.values():
            workarounds.keras_build_from_a_global_batch(model, batches)
    if distribute.is_multi_worker(strategy):
        with workarounds.keras_multi_worker_logs():
            yield
    else:
        yield


def _stopped_early(checkpointer, step: int, total_steps: int) -> None:
    if checkpointer.nan_step is not None:
        kept = (
            f"the last good checkpoint (step {checkpointer.last_saved_step}) is kept in "
            f"{checkpointer.read_dir}"
            if checkpointer.last_saved_step is not None
            else "no checkpoint was written yet"
        )
        raise TrainingStopped(
            f"loss became NaN at step {checkpointer.nan_step}; {kept}. Lower --learning_rate or use "
            "--warmup, then run again with --allow_config_change.",
            exit_code=3,
        )
    if checkpointer.interrupted:
        raise TrainingStopped(
            f"interrupted at step {step}/{total_steps}; checkpoint saved in {checkpointer.read_dir}. "
            "Run the same command again to resume.",
            exit_code=130,
        )


__all__ = [
    "ConfigError",
    "STOP",
    "TrainConfig",
    "TrainingStopped",
    "build_model",
    "load_data",
    "make_strategy",
    "precision_policy",
    "resumes_at",
    "run",
]
