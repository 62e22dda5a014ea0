"""The paper's experiments as training runs: the recipe of section 4.2 scaled to a budget, the
runs an experiment makes, what is left of them, and the paper's own numbers to compare with."""

from __future__ import annotations

import json
import logging
import pathlib
from collections.abc import Sequence

from keras_resnet.config import TrainConfig
from keras_resnet.console import duration
from keras_resnet.experiments.options import MACS_PER_SECOND, RUN_OVERHEAD_S, SPLIT_SIZES, Options
from keras_resnet.models import specs
from keras_resnet.rundir import RunDir, Summary
from keras_resnet.training import carry, procedure
from keras_resnet.training.steps import resumes_at
from keras_resnet.tuning.searching import default_tune_dir
from keras_resnet.tuning.tuner import trials_on_disk

log = logging.getLogger(__name__)


def paper_config(
    model: str, options: Options, *, shortcut: str = "", seed: int = 0, name: str = ""
) -> TrainConfig:
    """The paper's CIFAR-10 recipe (section 4.2) for `model`, scaled to the budget."""
    steps = options.budget
    spec = specs.get_spec(model, specs.CIFAR)
    run_dir = _run_dir(options, name or model)
    cfg = TrainConfig.of(
        model=model,
        # resnet50 and resnet152 name ImageNet nets unless told; only those depths spell the family
        # out, so the config.json of every other run stays as before (and resumes).
        family=specs.CIFAR if spec.depth in specs.IMAGENET_SPECS else "",
        shortcut=shortcut,
        dataset=options.dataset,
        data_dir=options.data_dir,
        batch_size=128,
        train_steps=steps,
        lr_milestones=(steps // 2, steps * 3 // 4),
        # 20 points per curve (the paper's Fig. 6 has about as many); every epoch at 64k.
        checkpoint_steps=max(min(steps // 20, 390), 1),
        eval_batch_size=1000,
        # The paper warms ResNet-110 up at lr 0.01 until the training error is below 80%.
        warmup=spec.depth >= 110,
        precision=options.precision,
        seed=seed,
        model_dir=str(run_dir),
        carry_dir=str(options.carry / run_dir.relative_to(options.out)) if options.carry else "",
    )
    cfg.check()
    saved = _saved_config(run_dir)
    return cfg.replace(padding=saved.model.padding if saved else cfg.model.padding)


def _run_dir(options: Options, name: str) -> pathlib.Path:
    """The run's folder under `options.runs_dir`, or where a run of its dataset was started before
    each dataset had a folder of its own (it resumes there)."""
    for earlier in options.earlier_runs_dirs:
        saved = _saved_config(earlier / name)
        if saved and saved.data.dataset == options.dataset:
            return earlier / name
    return options.runs_dir / name


def _saved_config(run_dir: pathlib.Path) -> TrainConfig | None:
    """The config of a run (or search) already under way in `run_dir`: one started before
    --padding existed resumes, and counts as done once finished, with its own padding."""
    for path, key in ((RunDir(run_dir).config, None), (RunDir(run_dir).tuning / "search.json", "config")):
        try:
            saved = json.loads(path.read_text())
            return TrainConfig.from_json(saved[key] if key else saved)
        except (OSError, ValueError, TypeError, KeyError):
            continue  # none, or damaged: training's own check of the folder says what is wrong
    return None


def steps_done(cfg: TrainConfig) -> int:
    """Iterations of the run of `cfg` already trained: all when finished, else the checkpointed ones."""
    run, tune_dir, steps = RunDir(cfg.run.model_dir), default_tune_dir(cfg), cfg.optim.train_steps
    # A finished run has its summary; a finished search (shortcuts) its results table.
    if run.finished() or (tune_dir / "results.csv").exists():
        return steps
    # A search's run (one shortcut option) is a trial: done, or checkpointed in its own folder.
    for values, status, trial_dir in trials_on_disk(tune_dir):
        if values.get("shortcut") == cfg.model.shortcut:
            return steps if status == "COMPLETED" else resumes_at(trial_dir)
    carried = carry.reached(cfg.run.carry_dir) if cfg.run.carry_dir else None
    return max(resumes_at(run.path), carried.step if carried else 0)


def estimate_seconds(cfgs: Sequence[TrainConfig]) -> float:
    """Time left of these runs: the multiply-adds of the iterations not yet checkpointed, every
    evaluation of the test set (and of the held-out split) at their checkpoints, a run's start-up."""
    total = 0.0
    for cfg in cfgs:
        blocks = sum(r for _, _, r in cfg.model.spec.stages)
        image_s = 3 * 40.6e6 * (blocks / 9) / MACS_PER_SECOND  # CIFAR nets: cost grows with the blocks
        done = steps_done(cfg)
        steps = max(cfg.optim.train_steps - done, 0)
        if not steps:
            continue
        train, test = SPLIT_SIZES.get(cfg.data.dataset, SPLIT_SIZES["cifar10"])
        evaluated = (test if cfg.run.eval_test else 0) + (train // 10 if cfg.data.validation_split else 0)
        checkpoints = -(-steps // (cfg.run.checkpoint_steps or max(train // cfg.data.batch_size, 1)))
        total += RUN_OVERHEAD_S + image_s * (steps * cfg.data.batch_size + checkpoints * evaluated / 3)
    return total


def train_all(cfgs: Sequence[TrainConfig], label: str) -> list[Summary]:
    left = estimate_seconds(cfgs)
    log.info(f"[reproduce] {label}: {len(cfgs)} run(s), about {duration(left)} left")
    summaries = []
    for i, cfg in enumerate(cfgs, 1):
        log.info(f"[reproduce] run {i}/{len(cfgs)}: {cfg.run.model_dir}")
        summaries.append(procedure.run(cfg))
    return summaries


def search_name(model: str, seed: int) -> str:
    return f"{model}-shortcuts-seed{seed}"


def plan(options: Options) -> list[TrainConfig]:
    """The training runs an experiment makes (a search counts its three trials)."""
    if options.experiment == "shortcuts":
        return [
            paper_config(m, options, seed=s, name=search_name(m, s)).replace(shortcut=o)
            for m in options.models
            for s in range(options.seeds)
            for o in specs.SHORTCUTS
        ]
    return [paper_config(m, options) for m in options.models]


def describe(cfgs: Sequence[TrainConfig]) -> str:
    """One line per run: its folder, its size, and whether it is done or resumes."""
    from keras_resnet import models

    lines = []
    for cfg in cfgs:
        m = cfg.model
        built = models.build_model(
            m.name, shortcut=m.shortcut or None, family=m.family or None, padding=m.padding
        )
        done = steps_done(cfg)
        resumes = ", done" if done >= cfg.optim.train_steps else f", resumes at step {done:,}" if done else ""
        lines.append(f"  {cfg.run.model_dir}  ({models.count(built).macs / 1e6:.1f}M multiply-adds{resumes})")
    return "\n".join(lines)
