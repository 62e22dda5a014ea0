"""The parts of one run, typed: what `procedure.run` makes once and what each step of `procedure.Run`
returns for the next.

- `RunContext`: what a run stands on (its config, devices, precision, where it writes), made in
  one place (`RunContext.make`) before any step.
- `Loaded`: `load_data`'s data, the step the run resumes at and the run's length.
- `Built`: `build`'s compiled model, its schedule, weight average, evaluated model and callbacks.
- `Paused`: what a run returns when it paused before its end (`procedure.run`'s `until_step`).
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import tempfile
from collections.abc import Sequence

import keras
import tensorflow as tf

from keras_resnet.config import TrainConfig
from keras_resnet.data.info import DataInfo
from keras_resnet.data.pipeline import Datasets
from keras_resnet.models.compiled import LearningRate
from keras_resnet.models.counting import ModelCount
from keras_resnet.rundir import RunDir
from keras_resnet.training.callbacks import RunCallbacks, WeightAverage
from keras_resnet.training.datarecord import DataChange


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What one run stands on, for every step of it."""

    cfg: TrainConfig
    strategy: tf.distribute.Strategy
    chief: bool  # writes the run's outputs (a single process always)
    precision: str  # the mixed-precision policy the run trains in
    start: float  # when the command began (time.time()): the summary's times count from it
    verbose: int  # 1: a status line redrawn in place; 0: a plain line a minute
    extra: tuple[keras.callbacks.Callback, ...]  # the caller's callbacks, after the run's own
    score_test: bool  # False: the test set is never seen (a tuning trial)
    until_step: int  # pause at this global step (`run`'s until_step); 0: train to the end
    dir: RunDir
    # Saving may involve collectives every worker must join, so the other workers write too:
    # into a scratch directory that goes away at the end (the chief: None).
    scratch: pathlib.Path | None
    carries: bool  # the chief of a run with --carry_dir

    @classmethod
    def make(
        cls,
        cfg: TrainConfig,
        strategy: tf.distribute.Strategy,
        *,
        chief: bool,
        precision: str,
        start: float,
        verbose: int | str,
        extra: Sequence[keras.callbacks.Callback],
        score_test: bool,
        until_step: int,
    ) -> RunContext:
        """The context of a run of `cfg`; `verbose` "auto" is 1 on a terminal. A worker's scratch
        directory is made here (`procedure.Run.execute` removes it)."""
        return cls(
            cfg=cfg,
            strategy=strategy,
            chief=chief,
            precision=precision,
            start=start,
            verbose=(1 if sys.stdout.isatty() else 0) if verbose == "auto" else int(verbose),
            extra=tuple(extra),
            score_test=score_test,
            until_step=until_step,
            dir=RunDir(cfg.run.model_dir),
            scratch=None if chief else pathlib.Path(tempfile.mkdtemp(prefix="keras_resnet_worker_")),
            carries=bool(chief and cfg.run.carry_dir),
        )


@dataclasses.dataclass(frozen=True)
class Loaded:
    """The run's data from the step it resumes at, and its length."""

    start_step: int  # the step the newest checkpoint holds (0: a new run)
    datasets: Datasets
    data_change: DataChange | None  # an allowed change of data, to record
    total_steps: int
    chunk: int  # steps between checkpoints (one `fit` epoch)

    @property
    def info(self) -> DataInfo:
        return self.datasets.info


@dataclasses.dataclass(frozen=True)
class Built:
    """The run's compiled model and what trains and scores it."""

    rate: LearningRate  # the schedule the optimizer follows, which the callbacks steer
    model: keras.Model
    average: WeightAverage | None  # --ema_decay's weight average
    evaluated: keras.Model  # what evaluations score: the average, with test-time augmentation
    counts: ModelCount
    callbacks: RunCallbacks


@dataclasses.dataclass(frozen=True)
class Paused:
    """What `run(..., until_step=N)` returns when it paused there: the step, and the data's sizes."""

    step: int
    total_steps: int
    train_examples: int
    validation_examples: int
    test_examples: int
