"""The training procedure: one run of a `TrainConfig`, from refusing bad input to summary.json.

    summary = training.run(TrainConfig.of(model="resnet20", model_dir="/tmp/run", train_steps=64000))

`run` is the one path every run takes, whoever starts it: `train.py`, a keras-tuner trial (with
its own model_dir, no test set and extra callbacks) and the paper's experiments. It checks the
flags and the saved configuration of --model_dir (a finished run returns its summary), proves
every output location writable and locks --model_dir, then takes the steps of `Run`, in order
(the shape of TF Model Garden's `train_lib`): `prepare`, `load_data`, `build`, `restore`, `fit`,
`evaluate`, `save`, `export`, `finish`. Their evaluation and export are `evaluation.evaluate_model`
and `evaluation.export_model`, which every caller shares (the tuner scores and exports its winner
with them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import shutil
import sys
import tempfile
import time
from collections.abc import Collection, Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_resnet import files, models, workarounds
from keras_resnet.config import ConfigError, TrainConfig, run_length
from keras_resnet.console import duration, percent
from keras_resnet.models import whitening
from keras_resnet.rundir import RunDir, Summary, check_space, claimed
from keras_resnet.training import carry, datarecord, distribution, finetune, optimization, steps
from keras_resnet.training.callbacks import RunCallbacks, WeightAverage, make_callbacks
from keras_resnet.training.checkpoints import Checkpointer
from keras_resnet.training.evaluation import evaluate_model, export_model
from keras_resnet.training.optimization import global_step
from keras_resnet.training.precision import precision_policy
from keras_resnet.training.signals import STOP
from keras_resnet.training.steps import build_model, finished_run, load_data, restore_carry, resumes_at


class TrainingStopped(RuntimeError):
    """Training ended early (interrupted, or the loss diverged); the message says how to go on."""

    def __init__(self, message: str, exit_code: int):
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
    if summary := finished_run(cfg):
        return summary
    start = started or time.time()
    strategy = distribution.strategy_for(cfg)
    chief = distribution.is_chief(strategy)
    with claimed(cfg, writes=chief), STOP.handling(), precision_policy(cfg.run.precision) as precision:
        if chief and cfg.run.carry_dir:
            restore_carry(cfg)
        # Re-checked under the lock: another run may have finished it meanwhile.
        if summary := finished_run(cfg, again=True):
            return summary
        taken = Run(cfg, strategy, chief, precision, start, verbose, tuple(callbacks), score_test, until_step)
        return taken.execute()


@dataclasses.dataclass(frozen=True)
class Paused:
    """What `run(..., until_step=N)` returns when it paused there: the step, and the data's sizes."""

    step: int
    total_steps: int
    train_examples: int
    validation_examples: int
    test_examples: int


class Run:
    """The steps of one run, in the order `execute` takes them; each may be overridden."""

    def __init__(self, cfg, strategy, chief, precision, start, verbose, extra, score_test, until_step=0):
        self.cfg, self.strategy, self.chief, self.precision = cfg, strategy, chief, precision
        self.start, self.extra, self.score_test = start, extra, score_test
        self.until_step = until_step  # pause there (`run`'s until_step); 0: train to the end
        self.dir = RunDir(cfg.run.model_dir)
        # Saving may involve collectives every worker must join, so the other workers write too:
        # into a scratch directory that goes away at the end.
        self.scratch = None if chief else pathlib.Path(tempfile.mkdtemp(prefix="keras_resnet_worker_"))
        self.verbose = (1 if sys.stdout.isatty() else 0) if verbose == "auto" else verbose
        self.carries = bool(chief and cfg.run.carry_dir)

    def execute(self) -> Summary | Paused:
        try:
            self.prepare()
            self.load_data()
            self.build()
            self.restore()
            with _distributed(self.strategy, self.model, self.evaluated, self.datasets.test):
                self.fit()
                if self.until_step and self.step < self.total_steps:
                    data = self.info, self.datasets
                    examples = data[0].train_examples, data[1].validation_examples, data[1].test_examples
                    return Paused(self.step, self.total_steps, *examples)
                test = self.evaluate()
            summary = self.summarize(test)
            self.save()
            if self.cfg.run.export_dir and self.chief:
                summary = self.export(summary)
            self.finish(summary)
            return summary
        finally:
            if self.scratch:
                shutil.rmtree(self.scratch, ignore_errors=True)

    def prepare(self) -> None:
        keras.utils.set_random_seed(self.cfg.run.seed)
        if self.cfg.run.deterministic:
            tf.config.experimental.enable_op_determinism()
        if self.chief:
            files.remove_stale_temporaries(self.dir.path)
            files.remove_stale_temporaries(self.dir.checkpoints)

    def load_data(self) -> None:
        """The data from the step the run resumes at (a resumed run must not replay its batches)."""
        self.start_step = resumes_at(self.dir.path)
        self.datasets = load_data(self.cfg, self.strategy, start_step=self.start_step)
        self.info = self.datasets.info
        self.data_change = datarecord.check(self.cfg, self.info, self.start_step)
        self.total_steps, self.chunk, _ = run_length(self.cfg, self.datasets.steps_per_epoch)
        _check_schedule(self.cfg, self.total_steps, self.chief)
        _check_tta(self.cfg, self.datasets)

    def build(self) -> None:
        """The compiled model inside the strategy's scope, its weight average, the evaluated model."""
        cfg = self.cfg
        with self.strategy.scope():
            weights = finetune.weights_for(cfg, self.info, resuming=self.start_step > 0)
            model = build_model(cfg, self.info, weights)
            if cfg.model.stem_init == "pca" and not self.start_step:  # resumed: the checkpoint has it
                sample = self.datasets.train_sample(whitening.IMAGES)
                whitening.whiten_stem(model, (x.numpy() for x, _ in sample))
            finetune.freeze(model, cfg.model.freeze)
            self.model = optimization.compile_model(model, cfg.optim, self.total_steps)
            self.average = WeightAverage(self.model, cfg.optim.ema_decay) if cfg.optim.ema_decay else None
            scored = self.average.average if self.average else self.model
            self.evaluated = models.with_test_time_augmentation(scored, cfg.run.tta)
            if self.evaluated is not self.model:
                optimization.compile_for_evaluation(self.evaluated, cfg.optim)
        self.counts = models.count(self.model)
        self.callbacks: RunCallbacks = make_callbacks(
            cfg,
            self.model,
            total_steps=self.total_steps,
            evaluated=self.evaluated,
            validation=self.datasets.validation,
            test=self.datasets.test if self.score_test else None,
            average=self.average,
            scratch_dir=self.scratch,
            verbose=self.chief,
            intra_epoch_log=not self.verbose,
            live=bool(self.verbose),
            # After the checkpointer: a carry copies the checkpoint just written.
            extra=(*self.extra, *([carry.Carrier(self.dir, cfg.run.carry_dir)] if self.carries else [])),
            steps_per_epoch=self.datasets.steps_per_epoch,
        )
        self.callbacks.checkpointer.stop_requested = lambda: STOP.requested is not None
        self.callbacks.progress.command_started = self.start  # before `restore` reads its state
        if 0 < self.until_step < self.total_steps:
            self.callbacks.stop.total_steps = self.until_step

    def restore(self) -> None:
        checkpointer = self.callbacks.checkpointer
        if self.chief:  # room for a checkpoint, the model and its export, before any step
            export_bytes = 0
            if self.cfg.run.export_dir:  # TF Serving's code is only needed with an export
                from keras_resnet.serving.exporting import room_needed

                export_bytes = room_needed(self.model)
            check_space(self.cfg, _state_bytes(self.model, self.average), export_bytes)
        with self.strategy.scope():  # restoring may build the optimizer's variables
            try:
                checkpointer.restore(self.model)
            except RuntimeError as err:
                raise ConfigError(f"--model_dir={self.cfg.run.model_dir}: {err}") from None
        self.restored_step = checkpointer.restored_step
        finished = self.dir.read_summary()  # an extended run: its time goes past its last checkpoint
        if finished and finished.steps == self.restored_step:
            self.callbacks.progress.continues_finished_run(finished.wall_time_s)
        if self.chief:
            # Recorded once the checkpoint accepted this configuration: a change that a checkpoint
            # refuses (--allow_config_change to another depth) must leave the old record standing.
            files.write_json(self.dir.config, self.cfg.to_json())
            files.write_text(self.dir.flags, self.cfg.to_flags())
            datarecord.record(self.dir, self.info, self.data_change, self.restored_step)
            print(self.header(), flush=True)
        if STOP.requested:
            raise TrainingStopped(f"{STOP.requested} before training started; nothing was trained.", 130)

    def fit(self) -> None:
        """`model.fit` until exactly the run's last step, in chunks of --checkpoint_steps counted
        from the step it resumed at (so a run extended from mid-chunk trains its extra steps)."""
        first = self.restored_step // self.chunk
        self.model.fit(
            self.datasets.train,
            epochs=first + -(-(self.total_steps - self.restored_step) // self.chunk),
            initial_epoch=first,
            steps_per_epoch=self.chunk,
            shuffle=False,  # the dataset shuffles itself
            callbacks=self.callbacks.ordered(),
            verbose=0,  # `progress.Progress` is the one display
        )
        self.step = global_step(self.model)
        _stopped_early(self.callbacks.checkpointer, self.step, self.total_steps)

    def evaluate(self) -> dict[str, float] | None:
        """The final model's test metrics: the last history row's when it was scored at this step."""
        if not self.score_test:
            return None
        rows = self.callbacks.history.rows
        last = rows[-1] if rows else {}
        if last.get("test_error") not in (None, "") and int(last.get("step", -1)) == self.step:
            return {k[len("test_") :]: float(v) for k, v in last.items() if k.startswith("test_")}
        return evaluate_model(self.evaluated, self.datasets.test)

    def summarize(self, test: dict[str, float] | None) -> Summary:
        cfg, info, progress = self.cfg, self.info, self.callbacks.progress
        rows = self.callbacks.history.rows
        last = rows[-1] if rows else {}

        def logged(key: str) -> float | None:
            return float(last[key]) if last.get(key) not in (None, "") else None

        return Summary(
            model=self.model.name,
            dataset=info.name,
            steps=self.step,
            total_steps=self.total_steps,
            test_error=float(test["error"]) if test else None,
            test_loss=float(test["loss"]) if test else None,
            test_top5_error=float(test["top5_error"]) if test and "top5_error" in test else None,
            val_error=logged("val_error"),
            train_error=logged("error"),
            shortcut=cfg.model.resolved_shortcut if cfg.model.spec.residual else None,
            params=self.counts.params,
            macs=self.counts.macs,
            batch_size=cfg.data.batch_size,
            epochs=self.step * cfg.data.batch_size / info.train_examples,
            train_examples=info.train_examples,
            test_examples=self.datasets.test_examples,
            data_sha256=info.data_sha256,
            weight_average=bool(self.average),
            tta=cfg.run.tta,
            wall_time_s=progress.run_wall_time(),
            command_time_s=progress.command_time(),
            train_time_s=progress.total_train_time,
            images_per_sec=progress.images_per_sec(),
            resumed_from_step=self.restored_step if progress.command_step is None else progress.command_step,
            replicas=self.strategy.num_replicas_in_sync,
            workers=distribution.num_workers(self.strategy),
            precision=self.precision,
            tensorflow=tf.__version__,
            keras=keras.__version__,
        )

    def save(self) -> None:
        """`model.keras`: the weight average's weights when averaging (what was scored)."""
        if self.average:
            self.model.set_weights(self.average.average.get_weights())
        with files.replacing((self.scratch or self.dir.path) / RunDir.MODEL) as tmp:
            self.model.save(tmp)

    def export(self, summary: Summary) -> Summary:
        """The next TF Serving version of the saved model under --export_dir. An export that fails
        (a full disk, another export holding the base) keeps the finished run: summary.json is
        written, and one line gives the command that exports it."""
        example = self.datasets.test_example(0)
        export_dir = self.cfg.run.export_dir
        try:
            exported = export_model(self.dir.path, export_dir, self.cfg.run.tta, example)
        except Exception as err:
            if not (files.disk_full(err) or isinstance(err, (OSError, ValueError, files.Locked))):
                raise
            self.finish(summary)
            why = "no space left on its device" if files.disk_full(err) else str(err)[:200]
            raise ConfigError(
                f"--export_dir={export_dir}: the export failed ({why}); the run is trained and kept in "
                f"{self.dir.path}. Export it with: python export/export.py --model_dir={self.dir.path} "
                f"--export_base={export_dir}"
            ) from None
        return dataclasses.replace(summary, export_path=str(exported))

    def finish(self, summary: Summary) -> None:
        if self.chief:
            self.dir.write_summary(summary)  # last: its presence marks a finished run
            if self.carries:
                carry.discard(self.cfg.run.carry_dir)
            this = (
                f", {duration(summary.command_time_s)} of them in this command"
                if summary.resumed_from_step
                else ""
            )
            print(
                f"done: test error {percent(summary.test_error)} after {summary.steps} steps in "
                f"{duration(summary.wall_time_s)}{this} ({summary.images_per_sec:.0f} img/s); outputs in "
                f"{self.dir.path} (model.keras, history.csv, curves.png, summary.json)",
                flush=True,
            )
        if STOP.requested:
            # Asked to stop at the last step or after it: the run is complete, and whoever runs
            # several (reproduce, a search, a script) must still stop.
            raise TrainingStopped(
                f"{STOP.requested} after the last step: the run is complete ({self.dir.summary}).", 130
            )

    def header(self) -> str:
        """The first line of a run: what trains on what, how, and where it starts."""
        cfg, info, datasets = self.cfg, self.info, self.datasets
        shortcut = f", shortcut {cfg.model.resolved_shortcut}" if cfg.model.spec.residual else ""
        sizes = f"{info.train_examples:,} train"
        if datasets.validation_examples:
            sizes += f" / {datasets.validation_examples:,} validation"
        sizes += f" / {datasets.test_examples:,} test images"
        workers = distribution.num_workers(self.strategy)
        where = f"{self.strategy.num_replicas_in_sync} replica(s)" + (
            f" on {workers} workers" if workers > 1 else ""
        )
        start = f"resuming at step {self.restored_step}" if self.restored_step else "starting"
        px = f"{info.image_size} px"
        if cfg.data.low_res_size:
            px += f", the first {cfg.data.low_res_epochs} epochs resized to {cfg.data.low_res_size} px"
        return (
            f"Training {self.model.name} ({self.counts.params:,} parameters, "
            f"{self.counts.macs / 1e6:,.1f}M multiply-adds{shortcut}) on {info.name} ({sizes}, "
            f"{info.num_classes} classes, {px}), {self.precision}, {where}: {self.total_steps:,} steps of "
            f"{cfg.data.batch_size} ({self.datasets.steps_per_epoch} per epoch); {start}; outputs in "
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


def _check_schedule(cfg: TrainConfig, total_steps: int, chief: bool) -> None:
    """Says so when --lr_milestones lie beyond the run (a preset's 32k/48k with --train_steps=200):
    those decays never happen."""
    late = [m for m in cfg.optim.lr_milestones if m >= total_steps]
    if late and cfg.optim.lr_schedule == "step" and chief:
        print(
            f"note: --lr_milestones {','.join(map(str, late))} lie at or beyond this run's last step "
            f"({total_steps:,}): the learning rate does not drop there. Give milestones inside the run, "
            "or --lr_milestones= (empty) to decay at 50% and 75% of it.",
            flush=True,
        )


def _check_tta(cfg: TrainConfig, datasets) -> None:
    """A test-time mirror is refused for a net that never saw a mirrored image (mirrored digits
    are other shapes: --tta=flip raised the digits' test error from 13.7% to 22.8%)."""
    if cfg.run.tta != "none" and not datasets.mirrored:
        raise ConfigError(
            f"--tta={cfg.run.tta} averages over mirrored test images, but this run trains without flips "
            f"(--flip=none, or {datasets.info.name}'s default): use --tta=none, or train with flips."
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
            exit_code=3,
        )
    if checkpointer.interrupted:
        raise TrainingStopped(
            f"interrupted at step {step}/{total_steps}; checkpoint saved in {checkpointer.read_dir}. "
            "Run the same command again to resume.",
            exit_code=130,
        )
