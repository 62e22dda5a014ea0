"""An experiment's settings and the paper's numbers (pure Python: the command reads them before
TensorFlow starts)."""

from __future__ import annotations

import dataclasses
import pathlib
import re

EXPERIMENTS = ("degradation", "responses", "shortcuts", "table6")
# Iterations per run by name. The default, "quick", is a look in minutes on the digits (1,438
# images: 200 iterations of 128 are 18 epochs); a budget given by name or number reproduces the
# paper on CIFAR-10 unless --dataset says otherwise.
BUDGETS = {"quick": 200, "cpu": 4000, "64k": 64000}
QUICK, QUICK_DATASET, PAPER_DATASET = "quick", "digits", "cifar10"
DEFAULT_MODELS = {
    "degradation": ("plain20", "plain56", "resnet20", "resnet56"),
    "responses": ("plain20", "plain56", "resnet20", "resnet56"),
    "shortcuts": ("resnet20",),
    "table6": ("resnet20",),
}
# Table 6, CIFAR-10 test error (%), and the reference PyTorch reproduction of the same nets and
# recipe (github.com/akamaster/pytorch_resnet_cifar10).
PAPER_TABLE6 = {"resnet20": 8.75, "resnet32": 7.51, "resnet44": 7.17, "resnet56": 6.97, "resnet110": 6.43}
REFERENCE_TABLE6 = {"resnet20": 8.27, "resnet32": 7.37, "resnet44": 6.90, "resnet56": 6.61, "resnet110": 6.32}
# Table 3, ImageNet val top-1 error (%, 10-crop) of ResNet-34 with each shortcut option.
PAPER_TABLE3 = {"A": 25.03, "B": 24.52, "C": 24.19}
# Training throughput measured here (2-core AMD EPYC Zen 3, float32, oneDNN): ResNet-20's train.py
# path at about 450 img/s, i.e. this many multiply-adds per second counting the backward pass as 2x
# (a Zen 1 EPYC trains at about 200 img/s: the estimate is a lower bound there).
MACS_PER_SECOND = 450 * 3 * 40.6e6
# What a run costs beside its steps: start-up (data, build, tracing) and saving, in seconds, and
# the images each evaluation reads (a test view costs a third of a training image).
RUN_OVERHEAD_S = 30.0
# What each experiment writes in --results ({budget}: the budget's name), and the folder of the
# results under --out: the only names of theirs `locations` lets a folder hold.
RESULT_FILES = {
    "degradation": ("degradation.csv", "degradation.png"),
    "responses": ("responses.csv", "responses.png"),
    "shortcuts": ("shortcuts.csv", "shortcuts.md"),
    "table6": ("table6-{budget}.csv",),
}
RESULTS_FOLDER = "results"
SPLIT_SIZES = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000), "digits": (1_438, 359)}


@dataclasses.dataclass
class Options:
    """An experiment's settings (the command line)."""

    experiment: str
    budget: int
    models: tuple[str, ...]
    seeds: int = 1
    dataset: str = "cifar10"
    data_dir: str = ""
    out: pathlib.Path = pathlib.Path("runs/reproduction")
    results: pathlib.Path | None = None  # default: `<out>/results`, never the checkout's results/
    carry: pathlib.Path | None = None  # each run's carry under `<carry>/<budget>/<run>` (--carry_dir)
    precision: str = "auto"

    @property
    def budget_name(self) -> str:
        return next((k for k, v in BUDGETS.items() if v == self.budget), str(self.budget))

    @property
    def dataset_dir(self) -> pathlib.Path:
        """No folder for CIFAR-10 (its runs keep the layout every earlier run resumes in), else the
        dataset's name as a folder name."""
        return pathlib.Path("" if self.dataset == PAPER_DATASET else re.sub(r"[^\w.-]+", "_", self.dataset))

    @property
    def runs_dir(self) -> pathlib.Path:
        """The experiment's runs: `<out>/<budget>` on CIFAR-10, `<out>/<dataset>/<budget>` on another."""
        return self.out / self.dataset_dir / self.budget_name

    @property
    def earlier_runs_dirs(self) -> tuple[pathlib.Path, ...]:
        """Where runs of another dataset lived before they had a folder of their own: `<out>/<budget>`,
        the budget by its name then or its number."""
        before = {v: k for k, v in BUDGETS.items() if k != QUICK}  # the names before "quick" existed
        names = dict.fromkeys([before.get(self.budget, str(self.budget)), self.budget_name])
        return tuple(d for d in (self.out / n for n in names) if d != self.runs_dir)

    @property
    def results_dir(self) -> pathlib.Path:
        return self.results or self.out / self.dataset_dir / RESULTS_FOLDER

    def result_file(self, index: int = 0) -> pathlib.Path:
        """The experiment's `index`-th file in --results (`RESULT_FILES`)."""
        return self.results_dir / RESULT_FILES[self.experiment][index].format(budget=self.budget_name)
