"""keras-tuner over training runs: the hypermodel (a search space as configurations) and the tuner
whose every trial is an ordinary `training.run` in the trial's own folder."""

from __future__ import annotations

import json
import logging
import math
import os
import pathlib
import shutil
from typing import Any

import keras_tuner

from keras_resnet import files, workarounds
from keras_resnet.config import ConfigError, TrainConfig
from keras_resnet.console import duration
from keras_resnet.interrupts import ExitCode
from keras_resnet.rundir import RunDir
from keras_resnet.training import procedure
from keras_resnet.training.signals import STOP
from keras_resnet.tuning import cluster
from keras_resnet.tuning.report import OBJECTIVE, format_value
from keras_resnet.tuning.space import apply_values

log = logging.getLogger(__name__)

TUNERS = ("grid", "random", "bayesian", "hyperband")
# keras-tuner's project folder inside --tune_dir (its trial_*/ directories live there).
PROJECT = "search"
# A trial's final statuses (INVALID too: trials are not retried).
ENDED = ("COMPLETED", "FAILED", "INVALID", "STOPPED")
HYPERBAND_FACTOR = 3  # keras-tuner's default: each round keeps a third of its trials, 3x longer


class ResNetHyperModel(keras_tuner.HyperModel):
    """The search space of a residual (or plain) net of the paper, as training configurations.

    `build(hp)` declares the space in `hp` and returns the trial's `TrainConfig` (not a model:
    the trial itself is a whole `training.run`, see `_Tuner.run_trial`).

    Args:
        cfg: the training configuration every trial starts from (`validation_split=True`).
        space: {hyperparameter: values} from `make_space`; the first value is the default.
    """

    def __init__(self, cfg: TrainConfig, space: dict[str, tuple]):
        super().__init__(name="resnet")
        self.cfg, self.space = cfg, space

    def values(self, hp: keras_tuner.HyperParameters) -> dict[str, Any]:
        """Declares the space in `hp` and returns the trial's active values."""
        values = {}
        if "plain" in self.space:
            values["plain"] = hp.Boolean("plain", default=self.space["plain"][0])
        for name, choices in self.space.items():
            if name == "plain":
                continue
            if name == "shortcut" and "plain" in self.space:
                # Plain nets have no shortcut: the grid must not train the same plain net 3 times.
                with hp.conditional_scope("plain", [False]):
                    value = hp.Choice(name, list(choices), default=choices[0])
                if values["plain"]:
                    continue
            else:
                value = hp.Choice(name, list(choices), default=choices[0])
            values[name] = value
        return values

    def build(self, hp: keras_tuner.HyperParameters) -> TrainConfig:
        return apply_values(self.cfg, self.values(hp))


class Tuner(keras_tuner.Tuner):
    """Runs each trial as `training.run` in the trial's directory, and reports its final model.

    The trial's result is the final model's validation error (the objective), its size, time and
    speed. A trial that was interrupted resumes from its checkpoints when the oracle hands it out
    again (keras-tuner re-queues running trials on reload, and hands a worker back its own running
    trial); a finished one returns its summary without training. Hyperband's continued trials
    start from the checkpoint of the trial they continue.
    """

    total_trials: int | None = None
    run_steps: tuple[int, int] | None = None  # (iterations, iterations per Keras epoch) of a run
    trained = 0  # trials run by this process

    def trial_config(self, trial) -> TrainConfig:
        cfg = self.hypermodel.build(trial.hyperparameters.copy())
        # A trial carries nothing: one --carry_dir shared by every trial would mix their states.
        changes: dict[str, Any] = {
            "model_dir": self.get_trial_dir(trial.trial_id),
            "export_dir": "",
            "carry_dir": "",
        }
        epochs = trial.hyperparameters.values.get("tuner/epochs")
        if epochs:  # Hyperband's budget for the trial, in checkpoint intervals (Keras epochs)
            if cfg.run.checkpoint_steps:
                changes.update(train_steps=int(epochs) * cfg.run.checkpoint_steps, epochs=0)
            else:
                changes.update(epochs=int(epochs), train_steps=0)
            # Never past the configured run, whose count of intervals was rounded up.
            if self.run_steps and int(epochs) * self.run_steps[1] > self.run_steps[0]:
                changes.update(train_steps=self.run_steps[0], epochs=0)
        return cfg.replace(**changes)

    def run_trial(self, trial, callbacks=(), **kwargs):
        cfg = self.trial_config(trial)
        parent = trial.hyperparameters.values.get("tuner/trial_id")
        checkpoints = RunDir(cfg.run.model_dir).checkpoints
        if parent and not checkpoints.exists():
            # Hyperband continues a trial: start from its last checkpoint, then train further. The
            # copy appears whole or not at all (a copy cut short would be taken as the trial's own).
            with files.staging_dir(checkpoints) as tmp:
                shutil.copytree(RunDir(self.get_trial_dir(parent)).checkpoints, tmp, dirs_exist_ok=True)
        try:
            # Hyperband copied in the checkpoints it continues, before the trial's config.json.
            owned = {RunDir.CHECKPOINTS}
            summary = procedure.run(cfg, callbacks=list(callbacks), score_test=False, owned=owned)
        except procedure.TrainingStopped as err:
            if err.exit_code == ExitCode.DIVERGED:  # diverged: this configuration fails, the search goes on
                # The run's advice (lower the rate, run again) is for a run of one's own, not a trial.
                raise keras_tuner.errors.FailedTrialError(str(err).split(". ")[0] + ".") from None
            raise SearchStopped(str(err)) from None
        if summary.val_error is None:
            raise keras_tuner.errors.FatalError(f"trial {trial.trial_id} ran no validation: no val_error.")
        self.trained += 1
        return {
            OBJECTIVE: summary.val_error,
            "steps": summary.steps,
            "train_time_s": summary.train_time_s,
            "train_images_per_sec": summary.images_per_sec,
            "params": summary.params,
            "macs": summary.macs,
        }

    def save_model(self, trial_id, model, step=0):
        pass  # each trial's run saves its own model.keras

    def load_model(self, trial):
        return RunDir(self.get_trial_dir(trial.trial_id)).load_model()  # damaged: named, with the way out

    def on_trial_begin(self, trial):
        super().on_trial_begin(trial)
        if self._is_worker():  # the trials' records live in the chief
            values = values_text(trial.hyperparameters.values)
            log.info(f"[tune] worker {self.tuner_id}: trial {trial.trial_id} ({values})")
            return
        done = [t for t in self.oracle.trials.values() if t.status == "COMPLETED"]
        times = [t.metrics.get_last_value("train_time_s") for t in done if t.metrics.exists("train_time_s")]
        line = (
            f"[tune] trial {trial.trial_id} ({values_text(trial.hyperparameters.values)}): {len(done)} done"
        )
        if self.total_trials:
            left = max(self.total_trials - len(done), 0)
            line += f" of {self.total_trials}"
            if times:
                line += f", ETA {duration(left * sum(times) / len(times))}"
        log.info(line)

    def search(self, *fit_args, **fit_kwargs):
        if cluster.distributed_role() == cluster.CHIEF:
            # Before saving: the saved oracle says which worker trains which trial.
            workarounds.give_a_restarted_chief_its_running_trials(self.oracle, ENDED)
            self.save()
            if not self._all_trials_ended():  # a chief restarted after the last trial: no one will ask
                why = cluster.serve_oracle(self.oracle, self.project_dir, lambda: STOP.requested)
                if why:
                    raise SearchStopped(f"{why} on the chief")
        else:
            if self._is_worker():
                workarounds.ride_out_a_chief_restart(self.oracle, cluster.chief_address())
                workarounds.pause_when_idle(self.oracle)
            super().search(*fit_args, **fit_kwargs)

    def _all_trials_ended(self) -> bool:
        """Whether the search ran all its trials: a grid's are counted, other tuners' are recorded
        by the chief when its oracle stops (`cluster.SEARCH_ENDED`), for the same --max_trials."""
        if not all(t.status in ENDED for t in self.oracle.trials.values()):
            return False
        remaining = self.oracle.remaining_trials()
        if remaining is not None and remaining <= 0:
            return True
        marker = pathlib.Path(self.project_dir) / cluster.SEARCH_ENDED
        return marker.is_file() and json.loads(marker.read_text()) == {"max_trials": self.oracle.max_trials}

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        if STOP.requested:
            raise SearchStopped(f"{STOP.requested} after trial {trial.trial_id}")


class NoTrialCompleted(procedure.TrainingStopped):
    """Every trial of a search failed: there is no winner to report, train or export (exit 1)."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=ExitCode.ERROR)


class SearchStopped(keras_tuner.errors.FatalError):
    """Ctrl-C or SIGTERM during a search: keras-tuner must let it through, not fail the trial."""


def make_tuner(
    hypermodel: ResNetHyperModel,
    tuner: str,
    *,
    max_trials: int | None,
    directory: str | os.PathLike,
    seed: int = 0,
    run_steps: tuple[int, int] = (1, 1),
) -> Tuner:
    """A keras-tuner tuner over `hypermodel`'s space minimizing the validation error.

    The project lives in `<directory>/search` and is reloaded when it exists (never overwritten).
    `run_steps` is (iterations, iterations per Keras epoch) of the configured run: Hyperband's
    budget in Keras epochs, rounded up, and the cap on its trials' length.
    """
    check_tuner(tuner, max_trials)
    objective = keras_tuner.Objective(OBJECTIVE, "min")
    # keras-tuner's seed=None draws one at random; 0 would too (`seed or random...`).
    seed = seed or 1
    # keras-tuner ends a search with an error after 3 failed trials in a row, and on reload re-runs
    # the third one, which fails again: a grid of diverging learning rates could never finish. A
    # failed trial is a result here (its row says so); the search goes on.
    failures = {"max_consecutive_failed_trials": None}
    if tuner == "hyperband":
        oracle = _hyperband_oracle(math.ceil(run_steps[0] / run_steps[1]), seed=seed, **failures)
        oracle.max_trials = max_trials  # Hyperband sizes itself; --max_trials caps it
    else:
        oracle_class = {
            "grid": workarounds.resumable_grid_oracle(),
            "random": keras_tuner.oracles.RandomSearchOracle,
            "bayesian": keras_tuner.oracles.BayesianOptimizationOracle,
        }[tuner]
        oracle = oracle_class(objective=objective, max_trials=max_trials, seed=seed, **failures)
    workarounds.allow_repeated_draws(oracle, 1000)  # else a small space ends with configurations left
    tuner_ = Tuner(oracle=oracle, hypermodel=hypermodel, directory=str(directory), project_name=PROJECT)
    workarounds.drop_ended_trials_from_retry_queue(oracle, ENDED)
    tuner_.run_steps = run_steps
    return tuner_


def _hyperband_oracle(max_epochs: int, **kwargs) -> keras_tuner.oracles.HyperbandOracle:
    objective = keras_tuner.Objective(OBJECTIVE, "min")
    return keras_tuner.oracles.HyperbandOracle(
        objective=objective, max_epochs=max_epochs, factor=HYPERBAND_FACTOR, **kwargs
    )


def check_hyperband_fits(size: int, total_steps: int, chunk: int) -> None:
    """Refuses Hyperband when its first round wants more configurations than the space holds.

    keras-tuner's Hyperband fills a bracket's first round with distinct random configurations
    before it continues any trial; when they run out it stops: only the shortest trials would run,
    and the "best" model would be one of them.
    """
    max_epochs = math.ceil(total_steps / chunk)
    oracle = _hyperband_oracle(max_epochs)
    needed = workarounds.hyperband_first_round(oracle)
    if size < needed:
        raise ConfigError(
            f"--tuner=hyperband over {max_epochs} checkpoint intervals starts with {needed} configurations, "
            f"the space has {size}: it would stop after its shortest trials. Search more values "
            "(e.g. --search=learning_rate=0.05/0.1/0.2/0.4,...) or use --tuner=grid."
        )


def check_tuner(tuner: str, max_trials: int | None) -> None:
    if tuner not in TUNERS:
        raise ValueError(f"Unknown --tuner {tuner!r}: expected one of {', '.join(TUNERS)}.")
    if max_trials is not None and (
        isinstance(max_trials, bool) or int(max_trials) != max_trials or max_trials < 1
    ):
        raise ValueError(f"--max_trials must be an integer >= 1, got {max_trials!r}.")


def trials_on_disk(tune_dir: pathlib.Path) -> list[tuple[dict[str, Any], str, pathlib.Path]]:
    """(hyperparameter values, status, trial directory) of each trial a search in `tune_dir` has
    started, read from keras-tuner's trial.json files without loading the tuner."""
    found = []
    for path in sorted((pathlib.Path(tune_dir) / PROJECT).glob("trial_*/trial.json")):
        try:
            trial = json.loads(path.read_text())
            found.append((trial["hyperparameters"]["values"], trial["status"], path.parent))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written, or damaged: counted as not started
    return found


def values_text(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={format_value(v)}" for k, v in values.items())
