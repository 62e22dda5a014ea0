"""The training procedure: one run of a `TrainConfig`, from refusing bad input to summary.json.

    summary = training.run(TrainConfig.of(model="resnet20", model_dir="/tmp/run", train_steps=64000))

`run` is the one path every run takes, whoever starts it: `train.py`, a keras-tuner trial (with
its own model_dir, no test set and extra callbacks) and the paper's experiments. It checks the
flags and the saved configuration of --model_dir (a finished run returns its summary), proves
every output location writable and locks --model_dir, makes the run's `RunContext` once, then
takes the steps of `Run`, in order (the shape of TF Model Garden's `train_lib`): `prepare`,
`load_data`, `build`, `restore`, `fit`, `evaluate`, `save`, `export`, `finish`; each returns what
it made (`runparts`: `Loaded`, `Built`, the step) for the next. Their evaluation and export are
`evaluation.evaluate_model` and `evaluation.export_model`, which every caller shares (the tuner
scores and exports its winner with them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import time
from collections.abc import Collection, Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_resnet import files, models, runtime, workarounds
from keras_resnet.config import ConfigError, TrainConfig, run_length
from keras_resnet.console import duration, percent
from keras_resnet.interrupts import ExitCode
from keras_resnet.models import whitening
from keras_resnet.rundir import RunDir, Summary, check_space, claimed
from keras_resnet.training import carry, datarecord, distribution, finetune, optimization, steps
from keras_resnet.training.callbacks import WeightAverage, make_callbacks
from keras_resnet.training.checkpoints import Checkpointer
from keras_resnet.training.evaluation import evaluate_model, export_model
from keras_resnet.training.optimization import global_step
from keras_resnet.training.precision import precision_policy
from keras_resnet.training.runparts import Built, Loaded, Paused, RunContext
from keras_resnet.training.signals import STOP
from keras_resnet.training.steps import build_model, finished_run, load_data, restore_carry, resumes_at

log = logging.getLogger(__name__)


class TrainingStopped(RuntimeError):
    """Training ended early (interrupted, or the loss diverged); the message says how to go on."""

    def __init__(self, message: str, exit_code: ExitCode):
        super().__init__(message)
        self.exit_code = exit_code


def run(
    cfg: TrainConfig,
    *,
    verbose: int | str = "auto",
    callbacks: Sequence[keras.callbacks.Callback] = (),
    score_test: bool = True,
    until_step: int = 0,
    started: float | None = None,
    owned: Collection[str] = (),
) -> Summary | Paused:
    """Trains (or resumes) the run `cfg` describes; returns the summary also written to summary.json.

    Args:
        cfg: the run; its model_dir holds every output.
        verbose: a status line redrawn in place (1) or a plain line per minute (0); "auto": 1 on a
            terminal.
        callbacks: extra Keras callbacks, run after the run's own.
        score_test: evaluate the test set (a tuning trial must not see it; then
            `summary.test_error` is None).
        until_step: pause at this global step if the run is longer: a checkpoint there, no
            evaluation, summary or export, and `Paused` returned; running `cfg` again continues it
            (`budget` measures a run's speed on its own first steps this way).
        started: when the command began (time.time(); default now). Calls with the same
            `started` are one command: the later ones continue its segments (no resume), and
            the summary's times count from it.
        owned: names the caller wrote in model_dir before the run (a search's trial record).

    Raises:
        ConfigError: bad flags, an unusable output location, a --model_dir in use or holding a
            different run or files the project did not write, missing data (nothing was trained).
        TrainingStopped: interrupted (checkpoint written) or diverged (last good checkpoint kept).
    """
    cfg.check()
    steps.check_locations(cfg, owned)  # the command's checks, whoever starts the run
    # A carried run that finished is answered under the lock, where its chief writes the final carry.
    if not cfg.run.carry_dir and (summary := finished_run(cfg)):
        return summary
    start = started or time.time()
    strategy = distribution.strategy_for(cfg)
    chief = distribution.is_chief(strategy)
    with claimed(cfg, writes=chief), STOP.handling(), precision_policy(cfg.run.precision) as precision:
        if chief and cfg.run.carry_dir:
            restore_carry(cfg)
        # Re-checked under the lock: another run may have finished it meanwhile.
        if summary := finished_run(cfg, again=True):
            if chief and cfg.run.carry_dir:  # a run that died between its summary and its final carry
                carry.finish(RunDir(cfg.run.model_dir), cfg.run.carry_dir)
            return summary
        context = RunContext.make(
            cfg,
            strategy,
            chief=chief,
            precision=precision,
            start=start,
            verbose=verbose,
            extra=callbacks,
            score_test=score_test,
            until_step=until_step,
        )
        return Run(context).execute()


class Run:
    """The steps of one run, in the order `execute` takes them; each returns what it made."""

    def __init__(self, context: RunContext):
        self.ctx = context

    def execute(self) -> Summary | Paused:
        ctx = self.ctx
        try:
            self.prepare()
            loaded = self.load_data()
            built = self.build(loaded)
            restored_step = self.restore(loaded, built)
            with _distributed(ctx.strategy, built.model, built.evaluated, loaded.datasets.test):
                step = self.fit(loaded, built, restored_step)
                if ctx.until_step and step < loaded.total_steps:
                    datasets = loaded.datasets
                    examples = (
                        loaded.info.train_examples,
                        datasets.validation_examples,
                        datasets.test_examples,
                    )
                    return Paused(step, loaded.total_steps, *examples)
                test = self.evaluate(loaded, built, step)
            summary = self.summarize(loaded, built, restored_step, step, test)
            self.save(built)
            if ctx.cfg.run.export_dir and ctx.chief:
                summary = self.export(loaded, summary)
            self.finish(summary)
            return summary
        finally:
            if ctx.scratch:
                shutil.rmtree(ctx.scratch, ignore_errors=True)

    def prepare(self) -> None:
        ctx = self.ctx
        keras.utils.set_random_seed(ctx.cfg.run.seed)
        if ctx.cfg.run.deterministic:
            tf.config.experimental.enable_op_determinism()
        if ctx.chief:
            files.remove_stale_temporaries(ctx.dir.path)
            files.remove_stale_temporaries(ctx.dir.checkpoints)

    def load_data(self) -> Loaded:
        """The data from the step the run resumes at (a resumed run must not replay its batches)."""
        cfg, ctx = self.ctx.cfg, self.ctx
        start_step = resumes_at(ctx.dir.path)
        datasets = load_data(cfg, ctx.strategy, start_step=start_step)
        data_change = datarecord.check(cfg, datasets.info, start_step)
        total_steps, chunk, _ = run_length(cfg, datasets.steps_per_epoch)
        steps.check_schedule(cfg, total_steps, ctx.chief)
        steps.check_tta(cfg, datasets)
        return Loaded(start_step, datasets, data_change, total_steps, chunk)

    def build(self, loaded: Loaded) -> Built:
        """The compiled model inside the strategy's scope, its weight average, the evaluated model."""
        cfg, ctx = self.ctx.cfg, self.ctx
        with ctx.strategy.scope():
            weights = finetune.weights_for(cfg, loaded.info, resuming=loaded.start_step > 0)
            model = build_model(cfg, loaded.info, weights)
            if cfg.model.stem_init == "pca" and not loaded.start_step:  # resumed: the checkpoint has it
                sample = loaded.datasets.train_sample(whitening.IMAGES)
                whitening.whiten_stem(model, (x.numpy() for x, _ in sample))
            finetune.freeze(model, cfg.model.freeze)
            rate = optimization.schedule(cfg.optim, loaded.total_steps)
            model = optimization.compile_model(model, cfg.optim, loaded.total_steps, rate)
            average = WeightAverage(model, cfg.optim.ema_decay) if cfg.optim.ema_decay else None
            evaluated = models.with_test_time_augmentation(average.average if average else model, cfg.run.tta)
            if evaluated is not model:
                optimization.compile_for_evaluation(evaluated, cfg.optim)
        callbacks = make_callbacks(
            cfg,
            model,
            total_steps=loaded.total_steps,
            rate=rate,
            evaluated=evaluated,
            validation=loaded.datasets.validation,
            test=loaded.datasets.test if ctx.score_test else None,
            average=average,
            scratch_dir=ctx.scratch,
            verbose=ctx.chief,
            intra_epoch_log=not ctx.verbose,
            live=bool(ctx.verbose),
            # After the checkpointer: a carry copies the checkpoint just written.
            extra=(*ctx.extra, *([carry.Carrier(ctx.dir, cfg.run.carry_dir)] if ctx.carries else [])),
            steps_per_epoch=loaded.datasets.steps_per_epoch,
        )
        callbacks.checkpointer.stop_requested = lambda: STOP.requested is not None
        callbacks.progress.command_started = ctx.start  # before `restore` reads its state
        if 0 < ctx.until_step < loaded.total_steps:
            callbacks.stop.total_steps = ctx.until_step
        return Built(rate, model, average, evaluated, models.count(model), callbacks)

    def restore(self, loaded: Loaded, built: Built) -> int:
        """The newest checkpoint's state in the model and callbacks; returns its step (0: none)."""
        cfg, ctx = self.ctx.cfg, self.ctx
        checkpointer = built.callbacks.checkpointer
        if ctx.chief:  # room for a checkpoint, the model and its export, before any step
            export_bytes = 0
            if cfg.run.export_dir:  # TF Serving's code is only needed with an export
                from keras_resnet.serving.exporting import room_needed

                export_bytes = room_needed(built.model)
            check_space(cfg, _state_bytes(built.model, built.average), export_bytes)
        with ctx.strategy.scope():  # restoring may build the optimizer's variables
            try:
                checkpointer.restore(built.model)
            except RuntimeError as err:
                raise ConfigError(f"--model_dir={cfg.run.model_dir}: {err}") from None
        restored_step = checkpointer.restored_step
        finished = ctx.dir.read_summary()  # an extended run: its time goes past its last checkpoint
        if finished and finished.steps == restored_step:
            built.callbacks.progress.continues_finished_run(finished.wall_time_s)
        if ctx.chief:
            # Recorded once the checkpoint accepted this configuration: a change that a checkpoint
            # refuses (--allow_config_change to another depth) must leave the old record standing.
            files.write_json(ctx.dir.config, cfg.to_json())
            files.write_text(ctx.dir.flags, cfg.to_flags())
            datarecord.record(ctx.dir, loaded.info, loaded.data_change, restored_step)
            log.info(self.header(loaded, built, restored_step))
        if STOP.requested:
            raise TrainingStopped(
                f"{STOP.requested} before training started; nothing was trained.", ExitCode.INTERRUPTED
            )
        return restored_step

    def fit(self, loaded: Loaded, built: Built, restored_step: int) -> int:
        """`model.fit` until exactly the run's last step, in chunks of --checkpoint_steps counted
        from the step it resumed at (so a run extended from mid-chunk trains its extra steps);
        returns the global step reached."""
        chunk, total_steps = loaded.chunk, loaded.total_steps
        first = restored_step // chunk
        built.model.fit(
            loaded.datasets.train,
            epochs=first + -(-(total_steps - restored_step) // chunk),
            initial_epoch=first,
            steps_per_epoch=chunk,
            shuffle=False,  # the dataset shuffles itself
            callbacks=built.callbacks.ordered(),
            verbose=0,  # `progress.Progress` is the one display
        )
        step = global_step(built.model)
        _stopped_early(built.callbacks.checkpointer, step, total_steps)
        return step

    def evaluate(self, loaded: Loaded, built: Built, step: int) -> dict[str, float] | None:
        """The final model's test metrics: the last history row's when it was scored at this step."""
        if not self.ctx.score_test:
            return None
        rows = built.callbacks.history.rows
        last = rows[-1] if rows else {}
        if last.get("test_error") not in (None, "") and int(last.get("step", -1)) == step:
            return {k[len("test_") :]: float(v) for k, v in last.items() if k.startswith("test_")}
        return evaluate_model(built.evaluated, loaded.datasets.test)

    def summarize(
        self, loaded: Loaded, built: Built, restored_step: int, step: int, test: dict[str, float] | None
    ) -> Summary:
        ctx, cfg, info, progress = self.ctx, self.ctx.cfg, loaded.info, built.callbacks.progress
        rows = built.callbacks.history.rows
        last = rows[-1] if rows else {}

        def logged(key: str) -> float | None:
            return float(last[key]) if last.get(key) not in (None, "") else None

        return Summary(
            model=built.model.name,
            dataset=info.name,
            steps=step,
            total_steps=loaded.total_steps,
            test_error=float(test["error"]) if test else None,
            test_loss=float(test["loss"]) if test else None,
            test_top5_error=float(test["top5_error"]) if test and "top5_error" in test else None,
            val_error=logged("val_error"),
            train_error=logged("error"),
            shortcut=cfg.model.resolved_shortcut if cfg.model.spec.residual else None,
            params=built.counts.params,
            macs=built.counts.macs,
            batch_size=cfg.data.batch_size,
            epochs=step * cfg.data.batch_size / info.train_examples,
            train_examples=info.train_examples,
            test_examples=loaded.datasets.test_examples,
            data_sha256=info.data_sha256,
            weight_average=bool(built.average),
            tta=cfg.run.tta,
            wall_time_s=progress.run_wall_time(),
            command_time_s=progress.command_time(),
            train_time_s=progress.total_train_time,
            images_per_sec=progress.images_per_sec(),
            resumed_from_step=restored_step if progress.command_step is None else progress.command_step,
            replicas=ctx.strategy.num_replicas_in_sync,
            workers=distribution.num_workers(ctx.strategy),
            precision=ctx.precision,
            cpu=runtime.cpu_description(),
            tensorflow=tf.__version__,
            keras=keras.__version__,
        )

    def save(self, built: Built) -> None:
        """`model.keras`: the weight average's weights when averaging (what was scored)."""
        if built.average:
            built.model.set_weights(built.average.average.get_weights())
        with files.replacing((self.ctx.scratch or self.ctx.dir.path) / RunDir.MODEL) as tmp:
            built.model.save(tmp)

    def export(self, loaded: Loaded, summary: Summary) -> Summary:
        """The next TF Serving version of the saved model under --export_dir. An export that fails
        (a full disk, another export holding the base) keeps the finished run: summary.json is
        written, and one line gives the command that exports it."""
        ctx, example = self.ctx, loaded.datasets.test_example(0)
        export_dir = ctx.cfg.run.export_dir
        try:
            exported = export_model(ctx.dir.path, export_dir, ctx.cfg.run.tta, example)
        except Exception as err:
            if not (files.disk_full(err) or isinstance(err, (OSError, ValueError, files.Locked))):
                raise
            self.finish(summary)
            why = "no space left on its device" if files.disk_full(err) else str(err)[:200]
            raise ConfigError(
                f"--export_dir={export_dir}: the export failed ({why}); the run is trained and kept in "
                f"{ctx.dir.path}. Export it with: python export/export.py --model_dir={ctx.dir.path} "
                f"--export_base={export_dir}"
            ) from None
        return dataclasses.replace(summary, export_path=str(exported))

    def finish(self, summary: Summary) -> None:
        ctx = self.ctx
        if ctx.chief:
            ctx.dir.write_summary(summary)  # last: its presence marks a finished run
            if ctx.carries:
                carry.finish(ctx.dir, ctx.cfg.run.carry_dir)
            this = (
                f", {duration(summary.command_time_s)} of them in this command"
                if summary.resumed_from_step
                else ""
            )
            log.info(
                f"done: test error {percent(summary.test_error)} after {summary.steps} steps in "
                f"{duration(summary.wall_time_s)}{this} ({summary.images_per_sec:.0f} img/s); outputs in "
                f"{ctx.dir.path} (model.keras, history.csv, curves.png, summary.json)"
            )
        if STOP.requested:
            # Asked to stop at the last step or after it: the run is complete, and whoever runs
            # several (reproduce, a search, a script) must still stop.
            raise TrainingStopped(
                f"{STOP.requested} after the last step: the run is complete ({ctx.dir.summary}).",
                ExitCode.INTERRUPTED,
            )

    def header(self, loaded: Loaded, built: Built, restored_step: int) -> str:
        """The first line of a run: what trains on what, how, and where it starts."""
        ctx, cfg, info, datasets, counts = self.ctx, self.ctx.cfg, loaded.info, loaded.datasets, built.counts
        shortcut = f", shortcut {cfg.model.resolved_shortcut}" if cfg.model.spec.residual else ""
        sizes = f"{info.train_examples:,} train"
        if datasets.validation_examples:
            sizes += f" / {datasets.validation_examples:,} validation"
        sizes += f" / {datasets.test_examples:,} test images"
        workers = distribution.num_workers(ctx.strategy)
        where = f"{ctx.strategy.num_replicas_in_sync} replica(s)" + (
            f" on {workers} workers" if workers > 1 else ""
        )
        start = f"resuming at step {restored_step}" if restored_step else "starting"
        px = f"{info.image_size} px"
        if cfg.data.low_res_size:
            px += f", the first {cfg.data.low_res_epochs} epochs resized to {cfg.data.low_res_size} px"
        return (
            f"Training {built.model.name} ({counts.params:,} parameters, "
            f"{counts.macs / 1e6:,.1f}M multiply-adds{shortcut}) on {info.name} ({sizes}, "
            f"{info.num_classes} classes, {px}), {ctx.precision}, {where}: {loaded.total_steps:,} steps of "
            f"{cfg.data.batch_size} ({datasets.steps_per_epoch} per epoch); {start}; outputs in "
            f"{cfg.run.model_dir}"
        )


# ----------------------------------------------------------------------------- helpers


def _state_bytes(model: keras.Model, average: WeightAverage | None) -> int:
    """A checkpoint's variables: weights and BN statistics, a momentum slot each trainable, the average."""
    nbytes = lambda vs: sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in vs)  # noqa: E731
    return (
        nbytes(model.variables)
        + nbytes(model.trainable_variables)
        + (nbytes(average.average.variables) if average else 0)
    )


@contextlib.contextmanager
def _distributed(strategy, trained: keras.Model, evaluated: keras.Model, batches) -> Iterator[None]:
    """Library workarounds for fit/evaluate on several replicas or workers (`workarounds`)."""
    if strategy.num_replicas_in_sync > 1 or distribution.is_multi_worker(strategy):
        for model in {id(trained): trained, id(evaluated): evaluated}.values():
            workarounds.keras_build_from_a_global_batch(model, batches)
    if distribution.is_multi_worker(strategy):
        with workarounds.keras_multi_worker_logs():
            yield
    else:
        yield


def _stopped_early(checkpointer: Checkpointer, step: int, total_steps: int) -> None:
    if checkpointer.diverged is not None:
        diverged_at, seen = checkpointer.diverged
        kept = (
            f"the last good checkpoint (step {checkpointer.last_saved_step}) is kept in "
            f"{checkpointer.read_dir}"
            if checkpointer.last_saved_step is not None
            else "no checkpoint was written yet"
        )
        raise TrainingStopped(
            f"training diverged at step {diverged_at} ({seen}); {kept}. Lower --learning_rate or use "
            "--warmup, then run again with --allow_config_change.",
            exit_code=ExitCode.DIVERGED,
        )
    if checkpointer.interrupted:
        raise TrainingStopped(
            f"interrupted at step {step}/{total_steps}; checkpoint saved in {checkpointer.read_dir}. "
            "Run the same command again to resume.",
            exit_code=ExitCode.INTERRUPTED,
        )
