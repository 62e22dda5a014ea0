"""Hyperparameter searches with keras-tuner: the paper's shortcut comparison (Table 3) and wider ones.

Every trial is an ordinary `training.run` of the searched configuration with the trial's values,
its own model_dir (`search/trial_<id>/`) and no test set: the same data pipeline, strategy,
schedule, callbacks, checkpoints and resume as `train.py`. The search tunes on the validation
split (45k/5k on CIFAR-10), ranks trials by the final model's validation error, and only the best
model sees the test set.

`search(cfg, ...)` (what `train.py --tune` calls) writes under `tune_dir`:
- `search/`: keras-tuner's project (one `trial_<id>/` per trial, with its TensorBoard logs);
- `results.csv`, `results.md`, `results.png`: one row / bar per trial;
- `best.flags`: the best configuration, for `train.py --flagfile`;
- `best/model.keras` + `best/data_info.json`, the best trial's weights (a normal run layout, so
  `serving.export_run` takes it), and a TF Serving export when `cfg.export_dir` is set.

Running the same command again continues an interrupted search: completed trials are kept, the
trial that was running resumes from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import shutil
import time
from collections.abc import Sequence
from typing import Any

import keras
import keras_tuner

from keras_resnet import distribute, files, models, optimization, training, workarounds
from keras_resnet.callbacks import duration
from keras_resnet.config import ConfigError, TrainConfig, check_config, run_length
from keras_resnet.search_space import apply_values, make_space, space_size
from keras_resnet.tuning_report import OBJECTIVE, format_value, trial_rows, write_results

TUNERS = ("grid", "random", "bayesian", "hyperband")
# keras-tuner's project folder inside --tune_dir (its trial_*/ directories live there).
PROJECT = "search"
# A trial's final statuses (INVALID too: trials are not retried).
ENDED = ("COMPLETED", "FAILED", "INVALID", "STOPPED")
_ENDED = "search_ended.json"  # in the project folder: the chief's oracle stopped handing out trials
HYPERBAND_FACTOR = 3  # keras-tuner's default: each round keeps a third of its trials, 3x longer


# ----------------------------------------------------------------------------- trials


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


class _Tuner(keras_tuner.Tuner):
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
        changes: dict[str, Any] = {"model_dir": self.get_trial_dir(trial.trial_id), "export_dir": ""}
        epochs = trial.hyperparameters.values.get("tuner/epochs")
        if epochs:  # Hyperband's budget for the trial, in checkpoint intervals (Keras epochs)
            if cfg.checkpoint_steps:
                changes.update(train_steps=int(epochs) * cfg.checkpoint_steps, epochs=0)
            else:
                changes.update(epochs=int(epochs), train_steps=0)
            # Never past the configured run, whose count of intervals was rounded up.
            if self.run_steps and int(epochs) * self.run_steps[1] > self.run_steps[0]:
                changes.update(train_steps=self.run_steps[0], epochs=0)
        return dataclasses.replace(cfg, **changes)

    def run_trial(self, trial, callbacks=(), **kwargs):
        cfg = self.trial_config(trial)
        parent = trial.hyperparameters.values.get("tuner/trial_id")
        checkpoints = pathlib.Path(cfg.model_dir) / "checkpoints"
        if parent and not checkpoints.exists():
            # Hyperband continues a trial: start from its last checkpoint, then train further. The
            # copy appears whole or not at all (a copy cut short would be taken as the trial's own).
            with files.staging_dir(checkpoints) as tmp:
                shutil.copytree(
                    pathlib.Path(self.get_trial_dir(parent)) / "checkpoints", tmp, dirs_exist_ok=True
                )
        try:
            summary = training.run(cfg, callbacks=list(callbacks), score_test=False)
        except training.TrainingStopped as err:
            if err.exit_code == 3:  # diverged: this configuration fails, the search goes on
                raise keras_tuner.errors.FailedTrialError(str(err)) from None
            raise _SearchStopped(str(err)) from None
        if summary.get("val_error") is None:
            raise keras_tuner.errors.FatalError(f"trial {trial.trial_id} ran no validation: no val_error.")
        self.trained += 1
        return {
            OBJECTIVE: summary["val_error"],
            "steps": summary["steps"],
            "train_time_s": summary["train_time_s"],
            "train_images_per_sec": summary["images_per_sec"],
            "params": summary["params"],
            "macs": summary["macs"],
        }

    def save_model(self, trial_id, model, step=0):
        pass  # each trial's run saves its own model.keras

    def load_model(self, trial):
        path = pathlib.Path(self.get_trial_dir(trial.trial_id)) / "model.keras"
        return keras.saving.load_model(path, safe_mode=True)

    def on_trial_begin(self, trial):
        super().on_trial_begin(trial)
        if self._is_worker():  # the trials' records live in the chief
            values = _values_text(trial.hyperparameters.values)
            print(f"[tune] worker {self.tuner_id}: trial {trial.trial_id} ({values})", flush=True)
            return
        done = [t for t in self.oracle.trials.values() if t.status == "COMPLETED"]
        times = [t.metrics.get_last_value("train_time_s") for t in done if t.metrics.exists("train_time_s")]
        line = f"[tune] trial {trial.trial_id}: {len(done)} done"
        if self.total_trials:
            left = max(self.total_trials - len(done), 0)
            line += f" of {self.total_trials}"
            if times:
                line += f", ETA {duration(left * sum(times) / len(times))}"
        print(line, flush=True)

    def search(self, *fit_args, **fit_kwargs):
        if distributed_role() == CHIEF:
            self.save()
            if not self._all_trials_ended():  # a chief restarted after the last trial: no one will ask
                self._serve()
        else:
            if self._is_worker():
                workarounds.pause_when_idle(self.oracle)
            super().search(*fit_args, **fit_kwargs)

    def _all_trials_ended(self) -> bool:
        """Whether the search ran all its trials: a grid's are counted, other tuners' are recorded
        by the chief when its oracle stops (`_ENDED`), for the same --max_trials."""
        if not all(t.status in ENDED for t in self.oracle.trials.values()):
            return False
        remaining = self.oracle.remaining_trials()
        if remaining is not None and remaining <= 0:
            return True
        marker = pathlib.Path(self.project_dir) / _ENDED
        return marker.is_file() and json.loads(marker.read_text()) == {"max_trials": self.oracle.max_trials}

    def _serve(self) -> None:
        """The chief: serves the oracle over gRPC until every trial has ended (or a stop signal).

        keras-tuner's own loop (`oracle_chief.start_server`) answers one request at a time and
        cannot be stopped by a signal; this one is the same servicer with a few threads, progress
        lines, and Ctrl-C/SIGTERM.
        """
        from concurrent import futures

        import grpc
        from keras_tuner.src import protos
        from keras_tuner.src.distribute import oracle_chief

        # grpcio binds with SO_REUSEPORT by default: a second chief on the same port would start
        # too, and the workers' requests would go to either search.
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=[("grpc.so_reuseport", 0)])
        servicer = oracle_chief.OracleServicer(self.oracle)
        protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
        try:
            bound = server.add_insecure_port(_chief_address())
        except RuntimeError:  # grpcio >= 1.60 raises where older versions returned 0
            bound = 0
        if not bound:
            raise ConfigError(
                f"the chief cannot listen on {_chief_address()}: is the port in use (another search)? "
                f"Set {ORACLE_PORT} to a free port, on the chief and every worker."
            )
        server.start()
        print(f"[tune] chief: serving the oracle at {_chief_address()}", flush=True)
        reported = None
        try:
            while not (servicer.stop_triggered and oracle_chief.exit_chief(self.oracle)):
                time.sleep(1)
                if training.STOP.requested:
                    raise _SearchStopped(f"{training.STOP.requested} on the chief")
                trials = list(self.oracle.trials.values())
                counts = (sum(t.status == "COMPLETED" for t in trials), len(self.oracle.ongoing_trials))
                if counts != reported:
                    reported = counts
                    print(f"[tune] chief: {counts[0]} trial(s) done, {counts[1]} running", flush=True)
            files.write_json(pathlib.Path(self.project_dir) / _ENDED, {"max_trials": self.oracle.max_trials})
        finally:
            server.stop(grace=5)

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        if training.STOP.requested:
            raise _SearchStopped(f"{training.STOP.requested} after trial {trial.trial_id}")


class NoTrialCompleted(training.TrainingStopped):
    """Every trial of a search failed: there is no winner to report, train or export (exit 1)."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=1)


class _SearchStopped(keras_tuner.errors.FatalError):
    """Ctrl-C or SIGTERM during a search: keras-tuner must let it through, not fail the trial."""


def make_tuner(
    hypermodel: ResNetHyperModel,
    tuner: str,
    *,
    max_trials: int | None,
    directory: str | os.PathLike,
    seed: int = 0,
    run_steps: tuple[int, int] = (1, 1),
) -> _Tuner:
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
    # Random draws of a new configuration give up after 20 repeats in a row: on a small space the
    # search (or a Hyperband round) ended with configurations left. Draws are cheap; trials are not.
    oracle._max_collisions = max(oracle._max_collisions, 1000)
    tuner_ = _Tuner(oracle=oracle, hypermodel=hypermodel, directory=str(directory), project_name=PROJECT)
    workarounds.drop_ended_trials_from_retry_queue(oracle, ENDED)
    tuner_.run_steps = run_steps
    return tuner_


def _hyperband_oracle(max_epochs: int, **kwargs) -> keras_tuner.oracles.HyperbandOracle:
    objective = keras_tuner.Objective(OBJECTIVE, "min")
    return keras_tuner.oracles.HyperbandOracle(
        objective=objective, max_epochs=max_epochs, factor=HYPERBAND_FACTOR, **kwargs
    )


def _check_hyperband_fits(size: int, total_steps: int, chunk: int) -> None:
    """Refuses Hyperband when its first round wants more configurations than the space holds.

    keras-tuner's Hyperband fills a bracket's first round with distinct random configurations
    before it continues any trial; when they run out it stops: only the shortest trials would run,
    and the "best" model would be one of them.
    """
    max_epochs = math.ceil(total_steps / chunk)
    oracle = _hyperband_oracle(max_epochs)
    needed = oracle._get_size(oracle._get_num_brackets() - 1, 0)
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


# ----------------------------------------------------------------------------- the search


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """What `search` wrote, and the winner."""

    rows: list[dict[str, Any]]
    best_values: dict[str, Any]
    best_trial: str
    best_val_error: float
    test_error: float | None
    tune_dir: pathlib.Path
    flagfile: pathlib.Path
    model_path: pathlib.Path
    tables: dict[str, pathlib.Path]
    export_path: pathlib.Path | None = None


def default_tune_dir(cfg: TrainConfig) -> pathlib.Path:
    """Where `search(cfg)` keeps its search unless told otherwise: `<cfg.model_dir>/tuning`."""
    return pathlib.Path(cfg.model_dir) / "tuning"


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


def search(
    cfg: TrainConfig,
    *,
    tuner: str = "grid",
    max_trials: int | None = None,
    tune_dir: str | os.PathLike | None = None,
    search: Sequence[str] | str = ("shortcut",),
    callbacks: Sequence[keras.callbacks.Callback] = (),
    wait_for_chief: float = 300.0,
) -> SearchResult | None:
    """Runs (or continues) a keras-tuner search over `search`, each trial a training run of `cfg`.

    On one machine by default. With keras-tuner's variables set (`KERASTUNER_TUNER_ID`,
    `KERASTUNER_ORACLE_IP`, `KERASTUNER_ORACLE_PORT`), the process with id `chief` serves the
    oracle over gRPC and trains nothing, and every other id is a worker that asks it for trials
    and trains them; all share `tune_dir`. The chief writes the results when the search ends;
    workers return None when the oracle has no trial left.

    Args:
        cfg: the training configuration; each trial trains it with the trial's values on the
            validation split (45k/5k), for its whole length (Hyperband: up to it).
        tuner: grid (every configuration in order; the default), random, bayesian or hyperband.
        max_trials: most trials to run; default and cap: the size of the space.
        tune_dir: where the search lives (default `<cfg.model_dir>/tuning`); the same search
            with the same `tune_dir` continues where it stopped.
        search: hyperparameters to search, see `parse_search` (e.g. ["shortcut", "depth=20/56"]).
        callbacks: extra Keras callbacks for every trial (keras-tuner deep-copies them per trial).
        wait_for_chief: a worker gives up after this many seconds without an answer from the chief.

    Returns:
        A `SearchResult` (None on a worker); the files are described in the module docstring.

    Raises:
        ConfigError: an empty or single-point space, an unknown tuner, max_trials < 1,
            bad training flags, a `tune_dir` holding a search with other settings (or, on a worker,
            settings other than the chief's), an unreachable chief.
        training.TrainingStopped: interrupted (Ctrl-C); the same call continues the search.
        NoTrialCompleted: no trial completed (each failure's error is printed).
    """
    try:
        check_tuner(tuner, max_trials)
        space = make_space(cfg, search)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    check_config(cfg)
    # Tune on held-out training images; the test set only scores the winner.
    tune_cfg = dataclasses.replace(cfg, validation_split=True, eval_test=False)
    tune_dir = pathlib.Path(tune_dir or default_tune_dir(cfg))
    size = space_size(space)
    # Hyperband's trials include continuations of earlier ones: only --max_trials caps them.
    if tuner != "hyperband" and (max_trials is None or max_trials > size):
        max_trials = size
    elif tuner == "grid" and max_trials < size:
        print(f"[tune] --max_trials={max_trials} < {size} configurations: the grid stops early.", flush=True)
    strategy = training.make_strategy(tune_cfg)
    if distribute.is_multi_worker(strategy):
        raise ConfigError(
            "--tune runs on one machine (keras-tuner supports single-worker strategies only): "
            "unset TF_CONFIG or pass --distribution=mirrored."
        )
    role = distributed_role()
    try:
        files.check_writable(tune_dir, "--tune_dir")
        if cfg.export_dir and role in (None, CHIEF):
            files.check_writable(cfg.export_dir, "--export_dir")
        # One search per directory; on a cluster the chief holds it, and each worker id its own.
        locked = tune_dir if role in (None, CHIEF) else tune_dir / "workers" / role
        lock = files.DirLock(locked, purpose=f"keras-tuner {role or 'search'}").acquire()
    except (files.NotWritable, files.Locked) as err:
        raise ConfigError(str(err)) from None
    try:
        if role not in (None, CHIEF):
            _wait_for_chief(wait_for_chief)
        return _search(
            cfg, tune_cfg, space, size, tuner, max_trials, tune_dir, strategy, callbacks, role, wait_for_chief
        )
    finally:
        lock.release()


def _search(
    cfg, tune_cfg, space, size, tuner, max_trials, tune_dir, strategy, callbacks, role, wait_for_chief
) -> SearchResult | None:
    settings = _check_same_search(tune_dir, tune_cfg, tuner, space, chief=role in (None, CHIEF))
    data = training.load_data(tune_cfg, strategy)  # checks the data before any trial; scores the winner
    total_steps, chunk, _ = run_length(tune_cfg, data.steps_per_epoch)
    if tuner == "hyperband":
        _check_hyperband_fits(size, total_steps, chunk)
    if settings is not None:  # a new search, recorded once its data loads (a typo must not pin it)
        tune_dir.mkdir(parents=True, exist_ok=True)
        files.write_json(tune_dir / "search.json", settings)
    hypermodel = ResNetHyperModel(tune_cfg, space)
    with training.STOP.handling():
        kt = make_tuner(
            hypermodel,
            tuner,
            max_trials=max_trials,
            directory=tune_dir,
            seed=cfg.seed,
            run_steps=(total_steps, chunk),
        )
        kt.total_trials = max_trials if tuner != "hyperband" else None
        if role is None:
            where = ""
        elif role == CHIEF:
            where = "; this process is the chief: it serves the oracle and trains nothing"
        else:
            where = f"; worker {role} of the chief at {_chief_address()}"
        trials = f"at most {max_trials} trials" if max_trials else "Hyperband's trials (no cap)"
        print(
            f"[tune] {tuner} search over {_space_text(space)}: {size} configurations, {trials} of "
            f"{total_steps} steps; {strategy.num_replicas_in_sync} replica(s); in {tune_dir}{where}",
            flush=True,
        )
        try:
            with workarounds.keras_tuner_rpc_timeout(wait_for_chief):
                kt.search(callbacks=list(callbacks))
        except _rpc_error() as err:
            raise training.TrainingStopped(
                f"lost the chief's oracle at {_chief_address()} ({err.code().name} after at most "
                f"{wait_for_chief:.0f} s): start this worker again when the chief is back; its unfinished "
                "trial resumes from its last checkpoint.",
                exit_code=1,
            ) from None
        except (KeyboardInterrupt, _SearchStopped) as err:
            why = str(err) or "KeyboardInterrupt"
            done = (
                ""
                if role not in (None, CHIEF)
                else (
                    f" with {sum(t.status == 'COMPLETED' for t in kt.oracle.trials.values())} trial(s) done"
                )
            )
            raise training.TrainingStopped(
                f"search interrupted ({why.splitlines()[0][:200]}){done}, kept in {tune_dir}; run the same "
                "command again to continue it (an unfinished trial resumes from its last checkpoint).",
                exit_code=130,
            ) from None
    if role not in (None, CHIEF):
        print(
            f"[tune] worker {role}: the chief has no trial left; {kt.trained} trial(s) trained here.",
            flush=True,
        )
        return None
    return _finish(kt, cfg, hypermodel, data, strategy, tuner, tune_dir)


def _rpc_error() -> type[Exception]:
    import grpc

    return grpc.RpcError


# ----------------------------------------------------------------------------- several machines

CHIEF = "chief"
TUNER_ID, ORACLE_IP, ORACLE_PORT = "KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"


def distributed_role() -> str | None:
    """None on one machine; else this process's keras-tuner id: `chief`, or a worker's (`tuner0`...).

    Raises:
        ConfigError: the variables are set only in part.
    """
    names = (TUNER_ID, ORACLE_IP, ORACLE_PORT)
    given = {n: os.environ.get(n, "") for n in names}
    if not any(given.values()):
        return None
    if missing := [n for n in names if not given[n]]:
        raise ConfigError(
            f"--tune on several machines needs {', '.join(names)}; {', '.join(missing)} "
            "is not set (chief: KERASTUNER_TUNER_ID=chief; workers: tuner0, tuner1, ...)."
        )
    if not given[ORACLE_PORT].isdigit():
        raise ConfigError(f"{ORACLE_PORT}={given[ORACLE_PORT]!r} is not a port number.")
    return given[TUNER_ID]


def _chief_address() -> str:
    return f"{os.environ[ORACLE_IP]}:{os.environ[ORACLE_PORT]}"


def _wait_for_chief(seconds: float) -> None:
    """Blocks until the chief's oracle answers; one line and ConfigError after `seconds`."""
    import grpc

    address = _chief_address()
    channel = grpc.insecure_channel(address)
    try:
        try:
            grpc.channel_ready_future(channel).result(timeout=min(5.0, seconds))
            return
        except grpc.FutureTimeoutError:
            print(f"[tune] waiting up to {seconds:.0f} s for the chief's oracle at {address}...", flush=True)
        try:
            grpc.channel_ready_future(channel).result(timeout=max(seconds - 5.0, 0.1))
        except grpc.FutureTimeoutError:
            raise ConfigError(
                f"cannot reach the chief's oracle at {address} after {seconds:.0f} s: start the chief first "
                f"({TUNER_ID}=chief, same {ORACLE_IP}/{ORACLE_PORT} and --tune flags), or check the address "
                "and the firewall."
            ) from None
    finally:
        channel.close()


def _finish(
    kt, cfg: TrainConfig, hypermodel: ResNetHyperModel, data, strategy, tuner: str, tune_dir: pathlib.Path
):
    """Results table, best flags, best model (scored on the test set) and its export."""
    space, info = hypermodel.space, data.info
    title = f"{cfg.model} on {info.name}: {tuner} search over {', '.join(space)}"
    rows = trial_rows(kt, space)
    tables = write_results(rows, tune_dir, title)
    _report_failures(kt)
    # The lowest validation error; a tie goes to the earlier trial (keras-tuner's own ranking
    # follows the order trials were reloaded from disk, which differs from run to run).
    done = [t for t in kt.oracle.trials.values() if t.status == "COMPLETED" and t.score is not None]
    best_trials = sorted(done, key=lambda t: (t.score, int(t.trial_id)))[:1]
    if not best_trials:
        raise NoTrialCompleted(
            f"no trial of the search in {tune_dir} completed (each one's error is printed above): change "
            "the searched values or the training flags, with a new --tune_dir."
        )
    best = best_trials[0]
    best_values = hypermodel.values(best.hyperparameters.copy())
    flagfile = tune_dir / "best.flags"
    files.write_text(flagfile, _flagfile_text(apply_values(cfg, best_values), best_values, best))

    # The winner's final model (its weight average when averaging), scored once on the test set.
    trial_dir = pathlib.Path(kt.get_trial_dir(best.trial_id))
    best_cfg = kt.trial_config(best)
    with strategy.scope(), training.precision_policy(cfg.precision):
        model = keras.saving.load_model(trial_dir / "model.keras", safe_mode=True)
        evaluated = models.with_test_time_augmentation(model, best_cfg.tta)
        if evaluated is not model:
            optimization.compile_for_evaluation(evaluated, best_cfg)
        if strategy.num_replicas_in_sync > 1:
            workarounds.keras_build_from_a_global_batch(evaluated, data.test)
        test = evaluated.evaluate(data.test, verbose=0, return_dict=True)
    best_dir = tune_dir / "best"
    best_dir.mkdir(parents=True, exist_ok=True)
    model_path = best_dir / "model.keras"
    with files.replacing(model_path) as tmp:
        shutil.copyfile(trial_dir / "model.keras", tmp)
    info.save(best_dir)
    # The winner's settings (its --tta among them): `export.py --model_dir=<tune_dir>/best` then
    # serves the model as it was scored.
    files.write_json(
        best_dir / "config.json", dataclasses.replace(best_cfg, model_dir=str(best_dir)).to_json()
    )
    previous = (
        json.loads((best_dir / "summary.json").read_text()) if (best_dir / "summary.json").is_file() else {}
    )
    summary = {
        "trial": best.trial_id,
        "values": best_values,
        "val_error": float(best.score),
        "test_error": float(test["error"]),
        "test_loss": float(test["loss"]),
        "flagfile": str(flagfile),
    }
    export_path = None
    if cfg.export_dir:
        from keras_resnet import serving  # the TF Serving code is only needed here

        # Running a finished search again exports the winner once, not a new version each time.
        exported = previous.get("export")
        if (
            previous.get("trial") == best.trial_id
            and exported
            and pathlib.Path(exported).parent.resolve() == pathlib.Path(cfg.export_dir).expanduser().resolve()
            and (pathlib.Path(exported) / "saved_model.pb").is_file()
        ):
            export_path = pathlib.Path(exported)
        else:
            export_path = serving.export(model, info, cfg.export_dir, tta=best_cfg.tta)
        summary["export"] = str(export_path)
    files.write_json(best_dir / "summary.json", summary)

    print(tables["md"].read_text(), flush=True)
    print(
        f"[tune] best: trial {best.trial_id} ({_values_text(best_values)}): validation error "
        f"{best.score:.2%}, test error {summary['test_error']:.2%}\n"
        f"[tune] results: {tables['md']} (also .csv, .png)\n"
        f"[tune] train it: python train.py --flagfile={flagfile}\n"
        f"[tune] best model: {model_path}"
        + (f"\n[tune] exported for TF Serving: {export_path}" if export_path else ""),
        flush=True,
    )
    return SearchResult(
        rows=rows,
        best_values=best_values,
        best_trial=best.trial_id,
        best_val_error=float(best.score),
        test_error=summary["test_error"],
        tune_dir=tune_dir,
        flagfile=flagfile,
        model_path=model_path,
        tables=tables,
        export_path=export_path,
    )


def _space_text(space: dict[str, tuple]) -> str:
    return ", ".join(f"{k}={'/'.join(format_value(v) for v in vs)}" for k, vs in space.items())


def _values_text(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={format_value(v)}" for k, v in values.items())


def _flagfile_text(cfg: TrainConfig, values: dict[str, Any], trial) -> str:
    header = (
        f"# The best of a keras-tuner search: trial {trial.trial_id} ({_values_text(values)}), "
        f"validation error {trial.score:.2%}.\n# python train.py --flagfile=THIS_FILE [--model_dir=...]\n"
    )
    return header + cfg.to_flags()


def _check_same_search(
    tune_dir: pathlib.Path, cfg: TrainConfig, tuner: str, space, chief: bool = True
) -> dict | None:
    """Refuses to continue a search in `tune_dir` that was started with other settings.

    The chief (or a single machine) writes the settings to `search.json` when it starts; a worker
    refuses to take trials of a search whose settings differ from its own flags. Returns the
    settings to record for a new search (the caller writes them once the data loads), else None.
    """
    settings = json.loads(
        json.dumps(
            {"tuner": tuner, "space": {k: list(v) for k, v in space.items()}, "config": cfg.training_fields()}
        )
    )
    path = tune_dir / "search.json"
    if not path.is_file() and not chief:
        raise ConfigError(
            f"the chief's {path} is missing: --tune_dir must be the chief's (a directory shared by the chief "
            "and every worker)."
        )
    if path.is_file():
        saved = json.loads(path.read_text())
        # Fields added since the search started count as their value for it (the defaults, and
        # "same" padding), so a new flag alone does not refuse an old search.
        if isinstance(saved.get("config"), dict):
            config = TrainConfig.from_json(saved["config"]).training_fields()
            saved["config"] = json.loads(json.dumps(config))
        if saved != settings:
            changed = [f"{k}" for k in settings if saved.get(k) != settings[k] and k != "config"]
            old, new = saved.get("config", {}), settings["config"]
            changed += [f"--{k}: {old.get(k)!r} -> {new[k]!r}" for k in new if old.get(k) != new[k]]
            if not chief:
                raise ConfigError(
                    f"this worker's --tune flags differ from the chief's ({'; '.join(changed)}): start the "
                    "worker with the chief's flags."
                )
            raise ConfigError(
                f"--tune_dir={tune_dir} holds a search with other settings ({'; '.join(changed)}). "
                "Run it again with its own flags to continue it, or pass a new --tune_dir."
            )
        return None
    return settings


def _report_failures(kt: keras_tuner.Tuner) -> None:
    for trial in kt.oracle.trials.values():
        if trial.status in ("FAILED", "INVALID") and trial.message:
            tail = "\n".join(trial.message.strip().splitlines()[-6:])
            print(f"[tune] trial {trial.trial_id} failed:\n{tail}", flush=True)
