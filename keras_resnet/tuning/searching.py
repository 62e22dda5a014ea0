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
- `best/`: the best trial's model and data info (a run folder `serving.export_run` takes), and its
  TF Serving export under `export/` (or --export_dir).

The same command again continues an interrupted search: the trial that was running resumes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import shutil
from collections.abc import Sequence
from typing import Any

import keras

from keras_resnet import files, models, workarounds
from keras_resnet.config import ConfigError, TrainConfig, run_length
from keras_resnet.interrupts import ExitCode
from keras_resnet.rundir import DamagedFile, RunDir, refuse_foreign_export
from keras_resnet.training import distribution, evaluation, optimization, procedure, steps
from keras_resnet.training.precision import precision_policy
from keras_resnet.training.signals import STOP
from keras_resnet.tuning import cluster
from keras_resnet.tuning.report import report_failures, space_text, trial_rows, write_results
from keras_resnet.tuning.space import apply_values, make_space, space_size
from keras_resnet.tuning.tuner import (
    PROJECT,
    NoTrialCompleted,
    ResNetHyperModel,
    SearchStopped,
    check_hyperband_fits,
    check_tuner,
    make_tuner,
    values_text,
)

log = logging.getLogger(__name__)

# Every name a search writes at the top of its --tune_dir (module docstring): anything else is the user's.
SEARCH_NAMES = frozenset(
    {PROJECT, "search.json", "results.csv", "results.md", "results.png", "best.flags", "best", "export"}
    | {"workers"}
)


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


@dataclasses.dataclass(frozen=True)
class SearchContext:
    """What one search stands on, made once by `search` and passed to each of its steps."""

    cfg: TrainConfig  # the caller's: the winner's flags and export
    tune_cfg: TrainConfig  # each trial's: the held-out split, no test set
    space: dict[str, tuple]
    size: int  # configurations in `space`
    tuner: str
    max_trials: int | None  # None: Hyperband's own count
    tune_dir: pathlib.Path
    strategy: Any  # tf.distribute.Strategy
    callbacks: tuple[keras.callbacks.Callback, ...]
    role: str | None  # None: one machine; else `cluster.CHIEF` or a worker's id
    wait_for_chief: float


def default_tune_dir(cfg: TrainConfig) -> pathlib.Path:
    """Where `search(cfg)` keeps its search unless told otherwise: `<cfg.model_dir>/tuning`."""
    return RunDir(cfg.run.model_dir).tuning


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
        procedure.TrainingStopped: interrupted (Ctrl-C); the same call continues the search.
        NoTrialCompleted: no trial completed (each failure's error is printed).
    """
    try:
        check_tuner(tuner, max_trials)
        space = make_space(cfg, search)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    cfg.check()
    ctx = _context(cfg, space, tuner, max_trials, tune_dir, callbacks, wait_for_chief)
    lock = _claimed(cfg, ctx.tune_dir, ctx.role)
    try:
        if ctx.role not in (None, cluster.CHIEF):
            cluster.wait_for_chief(wait_for_chief)
        return _search(ctx)
    finally:
        lock.release()


def _context(
    cfg: TrainConfig,
    space: dict[str, tuple],
    tuner: str,
    max_trials: int | None,
    tune_dir: str | os.PathLike | None,
    callbacks: Sequence[keras.callbacks.Callback],
    wait: float,
) -> SearchContext:
    """The search's context: trials on held-out training images (the test set only scores the
    winner), --max_trials capped by the space, one machine's strategy, this process's role."""
    tune_cfg = cfg.replace(validation_split=True, eval_test=False)
    size = space_size(space)
    # Hyperband's trials include continuations of earlier ones: only --max_trials caps them.
    if tuner != "hyperband" and (max_trials is None or max_trials > size):
        max_trials = size
    elif tuner == "grid" and max_trials < size:
        log.info(f"[tune] --max_trials={max_trials} < {size} configurations: the grid stops early.")
    strategy = distribution.strategy_for(tune_cfg)
    if distribution.is_multi_worker(strategy):
        raise ConfigError(
            "--tune runs on one machine (keras-tuner supports single-worker strategies only): "
            "unset TF_CONFIG or pass --distribution=mirrored."
        )
    tune_dir = pathlib.Path(tune_dir or default_tune_dir(cfg))
    role = cluster.distributed_role()
    return SearchContext(
        cfg, tune_cfg, space, size, tuner, max_trials, tune_dir, strategy, tuple(callbacks), role, wait
    )


def _claimed(cfg: TrainConfig, tune_dir: pathlib.Path, role: str | None) -> files.DirLock:
    """The search's lock, once --tune_dir (and --export_dir) hold nothing of the user's and are
    writable. One search per directory; on a cluster the chief holds it, and each worker id its own."""
    try:
        files.refuse_foreign(tune_dir, "--tune_dir", SEARCH_NAMES.__contains__)
        if cfg.run.export_dir:
            refuse_foreign_export(cfg.run.export_dir, "--export_dir")
        files.check_writable(tune_dir, "--tune_dir")
        if cfg.run.export_dir and role in (None, cluster.CHIEF):
            files.check_writable(cfg.run.export_dir, "--export_dir")
        locked = tune_dir if role in (None, cluster.CHIEF) else tune_dir / "workers" / role
        return files.DirLock(locked, purpose=f"keras-tuner {role or 'search'}").acquire()
    except (files.NotWritable, files.Locked, files.ForeignFiles) as err:
        raise ConfigError(str(err)) from None


def _search(ctx: SearchContext) -> SearchResult | None:
    chief = ctx.role in (None, cluster.CHIEF)
    settings = check_same_search(ctx.tune_dir, ctx.tune_cfg, ctx.tuner, ctx.space, chief=chief)
    data = steps.load_data(ctx.tune_cfg, ctx.strategy)  # checks the data before any trial; scores the winner
    total_steps, chunk, _ = run_length(ctx.tune_cfg, data.steps_per_epoch)
    if ctx.tuner == "hyperband":
        check_hyperband_fits(ctx.size, total_steps, chunk)
    if settings is not None:  # a new search, recorded once its data loads (a typo must not pin it)
        ctx.tune_dir.mkdir(parents=True, exist_ok=True)
        files.write_json(ctx.tune_dir / "search.json", settings)
    hypermodel = ResNetHyperModel(ctx.tune_cfg, ctx.space)
    with STOP.handling():
        kt = make_tuner(
            hypermodel,
            ctx.tuner,
            max_trials=ctx.max_trials,
            directory=ctx.tune_dir,
            seed=ctx.cfg.run.seed,
            run_steps=(total_steps, chunk),
        )
        kt.total_trials = ctx.max_trials if ctx.tuner != "hyperband" else None
        log.info(_announcement(ctx, total_steps))
        _run_trials(ctx, kt)
    if not chief:
        log.info(
            f"[tune] worker {ctx.role}: the chief has no trial left; {kt.trained} trial(s) trained here."
        )
        return None
    return _finish(kt, ctx, hypermodel, data)


def _announcement(ctx: SearchContext, total_steps: int) -> str:
    if ctx.role is None:
        where = ""
    elif ctx.role == cluster.CHIEF:
        where = "; this process is the chief: it serves the oracle and trains nothing"
    else:
        where = f"; worker {ctx.role} of the chief at {cluster.chief_address()}"
    trials = f"at most {ctx.max_trials} trials" if ctx.max_trials else "Hyperband's trials (no cap)"
    return (
        f"[tune] {ctx.tuner} search over {space_text(ctx.space)}: {ctx.size} configurations, {trials} of "
        f"{total_steps} steps; {ctx.strategy.num_replicas_in_sync} replica(s); in {ctx.tune_dir}{where}"
    )


def _run_trials(ctx: SearchContext, kt) -> None:
    """keras-tuner's search; a lost chief or an interruption ends it as `TrainingStopped`."""
    try:
        with workarounds.keras_tuner_rpc_timeout(ctx.wait_for_chief):
            # keras-tuner's own display counts trials from 1 ("Trial #1") where their ids, folders
            # and this package's lines count from 0: off, so that a search has one numbering.
            kt.search(callbacks=list(ctx.callbacks), verbose=0)
    except cluster.rpc_error() as err:
        raise procedure.TrainingStopped(
            f"lost the chief's oracle at {cluster.chief_address()} ({err.code().name} after at most "
            f"{ctx.wait_for_chief:.0f} s): start this worker again when the chief is back; its unfinished "
            "trial resumes from its last checkpoint.",
            exit_code=ExitCode.ERROR,
        ) from None
    except (KeyboardInterrupt, SearchStopped) as err:
        why = str(err) or "KeyboardInterrupt"
        done = (
            ""
            if ctx.role not in (None, cluster.CHIEF)
            else f" with {sum(t.status == 'COMPLETED' for t in kt.oracle.trials.values())} trial(s) done"
        )
        raise procedure.TrainingStopped(
            f"search interrupted ({why.splitlines()[0][:200]}){done}, kept in {ctx.tune_dir}; run the same "
            "command again to continue it (an unfinished trial resumes from its last checkpoint).",
            exit_code=ExitCode.INTERRUPTED,
        ) from None


def _finish(kt, ctx: SearchContext, hypermodel: ResNetHyperModel, data) -> SearchResult:
    """Results table, best flags, best model (scored once on the test set) and its export."""
    cfg, strategy, tuner, tune_dir, space = ctx.cfg, ctx.strategy, ctx.tuner, ctx.tune_dir, hypermodel.space
    title = f"{cfg.model.name} on {data.info.name}: {tuner} search over {', '.join(space)}"
    rows = trial_rows(kt, space)
    tables = write_results(rows, tune_dir, title)
    report_failures(kt)
    best = _best_trial(kt, tune_dir)
    best_values = hypermodel.values(best.hyperparameters.copy())
    flagfile = files.write_text(
        tune_dir / "best.flags", _flagfile_text(apply_values(cfg, best_values), best_values, best)
    )
    best_cfg = kt.trial_config(best)
    best_dir = _copy_winner(RunDir(kt.get_trial_dir(best.trial_id)), best_cfg, data.info, tune_dir / "best")
    test = _score(best_dir, best_cfg, data.test, strategy)
    previous = _previous_summary(best_dir)
    summary = {
        "trial": best.trial_id,
        "values": best_values,
        "val_error": float(best.score),
        "test_error": test["error"],
        "test_loss": test["loss"],
        "flagfile": str(flagfile),
    }
    export_base = pathlib.Path(cfg.run.export_dir or tune_dir / "export").expanduser()
    export_path = _export_winner(best_dir, best_cfg, export_base, previous, best.trial_id)
    summary["export"] = str(export_path)
    files.write_json(best_dir.summary, summary)
    log.info(tables["md"].read_text())
    log.info(
        f"[tune] best: trial {best.trial_id} ({values_text(best_values)}): validation error "
        f"{best.score:.2%}, test error {summary['test_error']:.2%}\n"
        f"[tune] results: {tables['md']} (also .csv, .png)\n"
        f"[tune] train it: python train.py --flagfile={flagfile} --model_dir=...\n"
        f"[tune] best model: {best_dir.model}\n[tune] exported for TF Serving: {export_path}"
    )
    return SearchResult(
        rows=rows,
        best_values=best_values,
        best_trial=best.trial_id,
        best_val_error=float(best.score),
        test_error=summary["test_error"],
        tune_dir=tune_dir,
        flagfile=flagfile,
        model_path=best_dir.model,
        tables=tables,
        export_path=export_path,
    )


def _best_trial(kt, tune_dir: pathlib.Path):
    """The lowest validation error; a tie goes to the earlier trial (keras-tuner's own ranking
    follows the order trials were reloaded from disk, which differs from run to run)."""
    done = [t for t in kt.oracle.trials.values() if t.status == "COMPLETED" and t.score is not None]
    if not done:
        raise NoTrialCompleted(
            f"no trial of the search in {tune_dir} completed (each one's error is printed above): change "
            "the searched values or the training flags, with a new --tune_dir."
        )
    return min(done, key=lambda t: (t.score, int(t.trial_id)))


def _copy_winner(trial: RunDir, best_cfg: TrainConfig, info, directory: pathlib.Path) -> RunDir:
    """`best/`: a run folder of the winner's final model (its weight average when averaging), its
    data info and its settings (its --tta among them), so exporting it serves what was scored."""
    try:
        trial.check_model()  # a damaged model is named, not copied
    except DamagedFile as err:
        raise ConfigError(f"the best trial's {err}") from None
    best = RunDir(directory)
    best.path.mkdir(parents=True, exist_ok=True)
    with files.replacing(best.model) as tmp:
        shutil.copyfile(trial.model, tmp)
    info.save(best.path)
    files.write_json(best.config, best_cfg.replace(model_dir=str(best.path)).to_json())
    return best


def _score(best: RunDir, best_cfg: TrainConfig, test, strategy) -> dict[str, float]:
    """The winner's test metrics, through training's own evaluation."""
    with strategy.scope(), precision_policy(best_cfg.run.precision):
        model = best.load_model()
        evaluated = models.with_test_time_augmentation(model, best_cfg.run.tta)
        if evaluated is not model:
            optimization.compile_for_evaluation(evaluated, best_cfg.optim)
        return evaluation.evaluate_model(evaluated, test)


def _previous_summary(best: RunDir) -> dict:
    """What an earlier end of this search wrote for its winner: {} if nothing, or nothing readable
    (it only spares a second export of the same trial)."""
    try:
        previous = json.loads(best.summary.read_text())
    except (OSError, ValueError):
        return {}
    return previous if isinstance(previous, dict) else {}


def _export_winner(best: RunDir, best_cfg: TrainConfig, base: pathlib.Path, previous: dict, trial: str):
    """The winner's export under `base` (the search's own `export/` unless --export_dir), through
    training's own export; a finished search run again exports it once, not a version each time."""
    exported = previous.get("export")
    if (
        previous.get("trial") == trial
        and exported
        and pathlib.Path(exported).parent.resolve() == base.resolve()
        and (pathlib.Path(exported) / "saved_model.pb").is_file()
    ):
        return pathlib.Path(exported)
    return evaluation.export_model(best.path, base, best_cfg.run.tta)


def _flagfile_text(cfg: TrainConfig, values: dict[str, Any], trial) -> str:
    header = (
        f"# The best of a keras-tuner search: trial {trial.trial_id} ({values_text(values)}), "
        f"validation error {trial.score:.2%}.\n# python train.py --flagfile=THIS_FILE --model_dir=...\n"
    )
    return header + cfg.to_flags(outputs=False)


def check_same_search(
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
        saved = _read_settings(path)
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


def _read_settings(path: pathlib.Path) -> dict:
    """A search's recorded settings; a damaged file is one line saying what to do."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        saved = err
    if not isinstance(saved, dict):
        raise ConfigError(
            f"{path} is damaged ({type(saved).__name__}): it records the search's settings. Restore it, or "
            "delete it to continue the search with this command's flags (its trials are kept)."
        )
    return saved
