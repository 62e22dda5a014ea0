"""Trains a ResNet of He et al. (2015), or searches its hyperparameters with --tune.

    python train.py --flagfile=configs/quickstart.cfg --model_dir=runs/quickstart   # offline, minutes
    python train.py --flagfile=configs/cifar10_resnet20.cfg --model_dir=runs/resnet20
    python train.py --flagfile=configs/cifar10_resnet20_fast.cfg --model_dir=runs/fast --time_budget=30
    python train.py --model_dir=runs/resnet20 --eval_only                           # score a run again

Every flag is a field of `keras_resnet.config.TrainConfig`; the defaults are the paper's CIFAR-10
procedure (batch 128, lr 0.1 divided by 10 at 50% and 75% of the run, momentum 0.9, weight decay
1e-4). A run's length has no default: give --train_steps (the paper's CIFAR-10 nets: 64000) or
--epochs, or a preset that gives one (--flagfile=configs/...). Run the same command again to resume
from the last checkpoint in --model_dir. `--verbosity=0` shows the libraries' info logs too.

Exit status: 0 done, 1 bad flags, data or output location (one line on stderr), 3 the loss
diverged, 130 interrupted (checkpoint written).
"""

from __future__ import annotations

import sys
import textwrap
import time

from absl import flags

from keras_resnet.config import ConfigError, TrainConfig, define_absl_flags, flag_fields, from_absl_flags

STARTED = time.time()  # --time_budget counts the whole command (Python's own start: ~0.1 s before)
FLAGS = flags.FLAGS
SECTION_TITLES = {
    "model": "model: the network",
    "data": "data: the images and their augmentation",
    "optim": "optimization: the loss, the optimizer, the schedule and the run's length",
    "run": "run: outputs, evaluation, devices",
}


def _define_flags() -> None:
    """The config's flags (`config.define_absl_flags`), then this command's own."""
    define_absl_flags()
    flags.DEFINE_float(
        "time_budget",
        0.0,
        "Minutes the whole command may take: the run's first steps measure this machine's speed, "
        "then its length is fitted into them (--low_res_epochs and --lr_warmup_steps in "
        "proportion) and fitted again after its first full-size epoch; the test set is evaluated "
        "at the end only. 0: off, the flags' own length.",
    )
    flags.DEFINE_bool(
        "eval_only", False, "Score the finished run in --model_dir on the test set, train nothing."
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


def _check_command_flags() -> None:
    if FLAGS.tune and FLAGS.time_budget:
        raise ConfigError("--time_budget plans one run and --tune runs many: give --epochs to a search.")
    if FLAGS.eval_only and (FLAGS.tune or FLAGS.time_budget):
        raise ConfigError("--eval_only scores a finished run: drop --tune and --time_budget.")
    if not FLAGS.tune_wait >= 0:
        raise ConfigError(f"--tune_wait must be >= 0 seconds, got {FLAGS.tune_wait}.")
    if FLAGS.max_trials is not None and FLAGS.max_trials < 1:
        raise ConfigError(f"--max_trials must be >= 1, got {FLAGS.max_trials}.")


def _run(cfg: TrainConfig) -> None:
    """The one thing this command was asked to do, after its flags passed."""
    from keras_resnet.rundir import RunDir
    from keras_resnet.training import budget, evaluation, procedure
    from keras_resnet.training.steps import check_locations

    if not (FLAGS.eval_only or FLAGS.tune):  # a search checks its own folders; --time_budget writes first
        check_locations(cfg)
    if FLAGS.eval_only:
        evaluation.evaluate_run(cfg.run.model_dir)
    elif FLAGS.tune:
        from keras_resnet.tuning import searching

        tune_dir = FLAGS.tune_dir or str(RunDir(cfg.run.model_dir).tuning)
        searching.search(
            cfg,
            tuner=FLAGS.tuner,
            max_trials=FLAGS.max_trials,
            tune_dir=tune_dir,
            search=FLAGS.search,
            wait_for_chief=FLAGS.tune_wait,
        )
    elif FLAGS.time_budget:
        budget.run(cfg, FLAGS.time_budget, started=STARTED)
    else:
        procedure.run(cfg, started=STARTED)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        sys.exit(f"train.py: error: unexpected arguments {argv[1:]}; flags look like --name=value.")
    try:
        _check_command_flags()
        cfg = from_absl_flags(FLAGS)
        if not FLAGS.eval_only:
            cfg.check()  # bad flags are refused before TensorFlow starts
    except ConfigError as err:
        sys.exit(f"train.py: error: {err}")
    from keras_resnet.interrupts import run_command

    # A signal outside training's own handling (which checkpoints first): one line, 130/143.
    run_command("train.py", lambda: _work(cfg))


_KEPT: list[BaseException] = []  # freeing h5py's open files in a full disk's frames prints their traceback


def _work(cfg: TrainConfig) -> int:
    """`_run`, with the errors the user fixes (bad data or location, a full disk) as one line on
    stderr and their exit status."""
    from keras_resnet import files, runtime
    from keras_resnet.interrupts import ExitCode

    runtime.start_command(FLAGS.verbosity if FLAGS["verbosity"].present else None)
    from keras_resnet.training.procedure import TrainingStopped

    try:
        _run(cfg)
    except ConfigError as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        return ExitCode.ERROR
    except TrainingStopped as err:
        print(f"train.py: {err}", file=sys.stderr)
        return err.exit_code
    except Exception as err:  # a full disk is the user's to fix: one line, not h5py's traceback
        if not files.disk_full(err):
            raise
        print(f"train.py: error: {files.no_space(f'--model_dir={cfg.run.model_dir}')}", file=sys.stderr)
        _KEPT.append(err)
        return ExitCode.ERROR
    return ExitCode.OK


def _flag_help(name: str) -> str:
    """One flag as `--help` shows it: its name and default, then its help indented."""
    flag = FLAGS[name]
    choices = getattr(flag.parser, "enum_values", None)
    if isinstance(flag.default, bool):
        head, default = f"--[no]{name}", str(flag.default).lower()
    else:
        shown = "|".join(c or "''" for c in choices or ())
        head = f"--{name}=<{shown}>" if choices else f"--{name}"
        value = ",".join(map(str, flag.default)) if isinstance(flag.default, list) else flag.default
        default = "none" if value is None else repr(value) if value in ("", []) else str(value)
    text = flag.help.removeprefix(f"<{'|'.join(choices)}>: ") if choices else flag.help
    body = textwrap.fill(text, width=100, initial_indent="      ", subsequent_indent="      ")
    return f"  {head} (default: {default})\n{body}"


def grouped_help() -> str:
    """Every flag a run takes, under its config section (model, data, optimization, run), then this
    command's own; absl's own flags (--flagfile, --verbosity, ...) are under --helpfull."""
    groups: dict[str, list[str]] = {}
    for name, section, _ in flag_fields():
        groups.setdefault(SECTION_TITLES[section], []).append(name)
    groups["this command"] = [f.name for f in FLAGS.get_flags_for_module(__name__)]  # `_define_flags`'s
    parts = [f"{title}:\n" + "\n".join(_flag_help(name) for name in names) for title, names in groups.items()]
    tail = "--flagfile=FILE reads flags from a file (configs/*.cfg); --helpfull lists absl's own flags too."
    return "\n\n".join([*parts, tail])


def _help() -> str:
    return __doc__ + "\n" + (FLAGS.get_help() if "--helpfull" in sys.argv else grouped_help())


if __name__ == "__main__":
    from keras_resnet.interrupts import run_absl_command

    run_absl_command(main, _help)
