"""Trains a ResNet of He et al. (2015), or searches its hyperparameters with --tune.

    python train.py --flagfile=configs/quickstart.cfg                  # 2 minutes, offline
    python train.py --flagfile=configs/cifar10_resnet20.cfg --model_dir=runs/resnet20
    python train.py --flagfile=configs/cifar10_resnet20_fast.cfg --model_dir=runs/fast --time_budget=30

Every flag is a field of `keras_resnet.config.TrainConfig`; the defaults are the paper's CIFAR-10
procedure (batch 128, lr 0.1 divided by 10 at 50% and 75% of the run, momentum 0.9, weight decay
1e-4). Run the same command again to resume from the last checkpoint in --model_dir.
`--verbosity=0` shows the libraries' info logs too.

Exit status: 0 done, 1 bad flags, data or output location (one line on stderr), 3 the loss
diverged, 130 interrupted (checkpoint written).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

from absl import app, flags

from keras_resnet.config import ConfigError, TrainConfig

STARTED = time.time()  # --time_budget counts the whole command (Python's own start: ~0.1 s before)

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """One absl flag per TrainConfig field, so the config class is the single list of flags."""
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text, choices = f.metadata["help"], f.metadata.get("choices")
        if choices:
            flags.DEFINE_enum(f.name, default, list(choices), help_text)
        elif isinstance(default, bool):
            flags.DEFINE_bool(f.name, default, help_text)
        elif isinstance(default, int):
            flags.DEFINE_integer(f.name, default, help_text)
        elif isinstance(default, float):
            flags.DEFINE_float(f.name, default, help_text)
        elif isinstance(default, tuple):
            flags.DEFINE_list(f.name, [str(v) for v in default], help_text)
        else:
            flags.DEFINE_string(f.name, default, help_text)
    flags.DEFINE_float(
        "time_budget",
        0.0,
        "Minutes the whole command may take: measure this machine's speed, then fit --epochs (with "
        "--low_res_epochs and --lr_warmup_steps in proportion) into them; the test set is evaluated "
        "at the end only. 0: off, the flags' own length.",
    )
    flags.DEFINE_bool("tune", False, "Search hyperparameters with keras-tuner instead of one run.")
    flags.DEFINE_enum(
        "tuner", "grid", ["grid", "random", "bayesian", "hyperband"], "--tune: search algorithm."
    )
    flags.DEFINE_integer(
        "max_trials", None, "--tune: most trials to run; default: every configuration (Hyperband: no cap)."
    )
    flags.DEFINE_string("tune_dir", "", "--tune: search state and trials; default <model_dir>/tuning.")
    flags.DEFINE_float(
        "tune_wait",
        300.0,
        "--tune worker on a cluster: seconds to wait for the chief's oracle before giving up.",
    )
    flags.DEFINE_list(
        "search",
        ["shortcut"],
        "--tune: hyperparameters to search (shortcut, depth, plain, learning_rate, weight_decay).",
    )


_define_flags()


def config_from_flags() -> TrainConfig:
    values = {}
    for f in dataclasses.fields(TrainConfig):
        value = FLAGS[f.name].value
        if f.name == "lr_milestones":
            try:
                value = tuple(int(v) for v in value)
            except ValueError:
                sys.exit(f"train.py: error: --lr_milestones must be integers, got {','.join(value)}.")
        values[f.name] = value
    return TrainConfig(**values)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        sys.exit(f"train.py: error: unexpected arguments {argv[1:]}; flags look like --name=value.")
    from keras_resnet import runtime, training, workarounds

    runtime.quiet(FLAGS.verbosity if FLAGS["verbosity"].present else None)
    cfg = config_from_flags()
    code = 0
    try:
        if FLAGS.tune and FLAGS.time_budget:
            raise ConfigError("--time_budget plans one run and --tune runs many: give --epochs to a search.")
        if FLAGS.tune:
            from keras_resnet import tuning

            tuning.search(
                cfg,
                tuner=FLAGS.tuner,
                max_trials=FLAGS.max_trials,
                tune_dir=FLAGS.tune_dir or os.path.join(cfg.model_dir, "tuning"),
                search=FLAGS.search,
                wait_for_chief=FLAGS.tune_wait,
            )
        else:
            if FLAGS.time_budget:
                from keras_resnet import budget

                cfg = budget.plan(cfg, FLAGS.time_budget, started=STARTED)
            training.run(cfg)
    except ConfigError as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        code = 1
    except training.TrainingStopped as err:
        print(f"train.py: {err}", file=sys.stderr)
        code = err.exit_code
    workarounds.exit_before_finalization(code)
    sys.exit(code)


if __name__ == "__main__":
    app.run(main)
