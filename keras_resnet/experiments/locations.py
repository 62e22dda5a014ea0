"""The folders `reproduce` writes (--out, --results, --carry), checked before any run starts.

Each holds only what the project writes there, in its layout: `<out>[/<dataset>]/<budget>/<run>`
(and `results/`), `<carry>[/<dataset>]/<budget>/<run>/step-N`, and the experiments' CSV files and
figures in --results. A folder holding anything else is the user's and is refused in one line
naming a few of the files; so are folders that lie inside one another. Each run's own folders are
checked as a training run checks them (`training.steps.check_locations`).
"""

from __future__ import annotations

import fnmatch
import os
import pathlib
from collections.abc import Sequence

from keras_resnet import files
from keras_resnet.config import ConfigError, TrainConfig
from keras_resnet.experiments.options import BUDGETS, RESULT_FILES, RESULTS_FOLDER, Options
from keras_resnet.training.steps import check_locations as check_run

# The checkout's own results folder holds the project's other records beside the experiments'.
# (keras_resnet/files.py's parents[1] is the checkout: the package's own top module, not beside it.)
CHECKOUT_RESULTS = pathlib.Path(files.__file__).resolve().parents[1] / "results"


def check(options: Options, cfgs: Sequence[TrainConfig]) -> None:
    """Refuses, before any run, a --out, --results or --carry holding the user's files or lying
    inside another, and each run's folders as its run would; then proves each writable (creating it).

    Raises:
        ConfigError: one line naming the flag, a few of the files, and the fix.
        files.NotWritable: a folder that cannot be written.
    """
    runs = {pathlib.Path(cfg.run.model_dir) for cfg in cfgs}
    carried = {pathlib.Path(cfg.run.carry_dir) for cfg in cfgs if cfg.run.carry_dir}
    _refuse_clashes(options, runs)
    try:
        _refuse_foreign_layout(options.out, "--out", options, {p.parent for p in runs})
        if options.carry is not None:
            _refuse_foreign_layout(options.carry, "--carry", options, {p.parent for p in carried})
        files.refuse_foreign(options.results_dir, "--results", _result_file(options.results_dir))
    except files.ForeignFiles as err:
        raise ConfigError(str(err)) from None
    for cfg in cfgs:
        check_run(cfg)
    # --out first: the default --results lies under it, and a bad --out is the one to name.
    writes = {"--out": options.out, "--carry": options.carry, "--results": options.results_dir}
    for flag, folder in writes.items():
        if folder is not None:
            files.check_writable(folder, flag)


def _refuse_clashes(options: Options, runs: set[pathlib.Path]) -> None:
    out, results = _absolute(options.out), _absolute(options.results_dir)
    carry = _absolute(options.carry) if options.carry is not None else None
    pairs = [("--results", results, "--carry", carry), ("--out", out, "--carry", carry)]
    pairs += [("--results", results, "the run folder", _absolute(run)) for run in runs]
    for flag, path, other_flag, other in pairs:
        if other is not None and (path.is_relative_to(other) or other.is_relative_to(path)):
            raise ConfigError(
                f"{flag}={path} and {other_flag} {other} lie inside one another: each keeps its own "
                "files, so give folders side by side (the defaults are runs/reproduction and its results/)."
            )


def _refuse_foreign_layout(
    root: pathlib.Path, flag: str, options: Options, budget_dirs: set[pathlib.Path]
) -> None:
    """`root`'s top, its dataset folder and the budget folders the runs go to hold the layout only."""
    files.refuse_foreign(root, flag, lambda name: _layout(name) or _dataset_folder(root / name))
    if str(options.dataset_dir) not in ("", "."):
        files.refuse_foreign(root / options.dataset_dir, flag, _layout)
    for folder in sorted(budget_dirs):  # run folders only: each is checked as its run checks it
        files.refuse_foreign(folder, flag, lambda name, folder=folder: (folder / name).is_dir())


def _layout(name: str) -> bool:
    """A budget's folder (by name or number) or the results' folder."""
    return name in BUDGETS or name.isdigit() or name == RESULTS_FOLDER


def _dataset_folder(path: pathlib.Path) -> bool:
    """Another dataset's folder: budget folders and results only."""
    try:
        return path.is_dir() and all(_layout(n) or n.startswith(".") for n in os.listdir(path))
    except OSError:
        return False


def _result_file(folder: pathlib.Path):
    """The names the experiments write in --results; in the checkout's results folder, any."""
    if _absolute(folder).is_relative_to(CHECKOUT_RESULTS):
        return lambda name: True
    patterns = [p.format(budget="*") for names in RESULT_FILES.values() for p in names]
    return lambda name: any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _absolute(path: str | os.PathLike) -> pathlib.Path:
    return pathlib.Path(path).expanduser().resolve()
