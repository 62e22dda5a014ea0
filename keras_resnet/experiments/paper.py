"""The paper's experiments, each a set of training runs and the tables and figures made from them.

- `degradation` (Fig. 6): plain nets get worse with depth, residual nets better.
- `responses` (Fig. 7): the standard deviation of the 3x3 layers' responses.
- `shortcuts` (Table 3): options A, B and C as keras-tuner grid searches.
- `table6` (Table 6): test error at the budget, beside the paper's and the reference's.

Every CSV row names its dataset and the fingerprint of the training data it was measured on
(`data_sha256`).
"""

from __future__ import annotations

import csv
import logging
import pathlib

from keras_resnet import data, files
from keras_resnet.experiments import figures
from keras_resnet.experiments.measure import response_stds, train_error
from keras_resnet.experiments.options import PAPER_TABLE6, REFERENCE_TABLE6, Options
from keras_resnet.experiments.plan import paper_config, search_name, train_all
from keras_resnet.rundir import RunDir, Summary
from keras_resnet.training.precision import precision_policy
from keras_resnet.tuning.searching import search
from keras_resnet.tuning.tuner import trials_on_disk

log = logging.getLogger(__name__)


def _finished(cfgs) -> list[tuple[object, RunDir, Summary]]:
    found = []
    for cfg in cfgs:
        run = RunDir(cfg.run.model_dir)
        if (summary := run.read_summary()) is not None:
            found.append((cfg, run, summary))
    return found


def _provenance(summary: Summary) -> dict[str, str]:
    return {"dataset": summary.dataset, "data_sha256": summary.data_sha256}


def degradation(options: Options) -> dict[str, pathlib.Path]:
    """Fig. 6: training error (final model, evaluation mode) and test error of each net, and their curves."""
    cfgs = [paper_config(m, options) for m in options.models]
    train_all(cfgs, f"degradation at {options.budget:,} iterations")
    rows, curves = [], {}
    for cfg, run, summary in _finished(cfgs):
        rows.append(
            {
                "model": cfg.model.name,
                "steps": summary.steps,
                "train_error": round(train_error(cfg), 5),
                "test_error": round(summary.test_error, 5),
                **_provenance(summary),
            }
        )
        with open(run.history) as f:
            curves[cfg.model.name] = list(csv.DictReader(f))
    out = {"csv": figures.write_csv(options.result_file(0), rows)}
    out["png"] = figures.plot_degradation(curves, options.result_file(1), options.budget, options.dataset)
    log.info(figures.table(rows))
    return out


def responses(options: Options) -> dict[str, pathlib.Path]:
    """Fig. 7: std of each 3x3 layer's response on the test set, of the nets `degradation` trains."""
    cfgs = [paper_config(m, options) for m in options.models]
    train_all(cfgs, f"responses of nets trained {options.budget:,} iterations")
    rows = []
    for cfg, run, summary in _finished(cfgs):
        ds = data.load(
            cfg.data.dataset, data_dir=cfg.data.data_dir or None, eval_batch_size=500, verbose=False
        )
        with precision_policy(cfg.run.precision):
            model = run.load_model()
            stds = response_stds(model, ds.test)
        rows += [
            {
                "model": cfg.model.name,
                "layer_index": i + 1,
                "layer": n,
                "std": round(s, 6),
                **_provenance(summary),
            }
            for i, (n, s) in enumerate(stds.items())
        ]
    out = {"csv": figures.write_csv(options.result_file(0), rows)}
    out["png"] = figures.plot_responses(rows, options.result_file(1), options.dataset)
    return out


def shortcuts(options: Options) -> dict[str, pathlib.Path]:
    """Options A, B and C (Table 3) as keras-tuner grid searches, one per seed, on the 45k/5k split."""
    rows = []
    for model in options.models:
        for seed in range(options.seeds):
            cfg = paper_config(model, options, seed=seed, name=search_name(model, seed))
            log.info(f"[reproduce] shortcut search: {model}, seed {seed}")
            result = search(cfg, tuner="grid", search=["shortcut"])
            trial_dirs = {values.get("shortcut"): d for values, _, d in trials_on_disk(result.tune_dir)}
            for row in result.rows:
                if row["status"] != "COMPLETED":
                    continue
                summary = RunDir(trial_dirs[row["shortcut"]]).read_summary()
                rows.append(
                    {
                        "model": model,
                        "seed": seed,
                        "shortcut": row["shortcut"],
                        "params": row["params"],
                        "val_error": round(row["val_error"], 5),
                        **_provenance(summary),
                    }
                )
    out = {"csv": figures.write_csv(options.result_file(0), rows)}
    summary_md = figures.shortcut_summary(rows)
    out["md"] = files.write_text(options.result_file(1), summary_md)
    log.info(summary_md)
    return out


def _fraction(percent: float | None) -> float | str:
    return "" if percent is None else round(percent / 100, 4)


def table6(options: Options) -> dict[str, pathlib.Path]:
    """Table 6: test error of the CIFAR-10 nets at the budget, beside the paper's and the reference's."""
    cfgs = [paper_config(m, options) for m in options.models]
    train_all(cfgs, f"Table 6 at {options.budget:,} iterations")
    rows = [
        {
            "model": cfg.model.name,
            "steps": summary.steps,
            "params": summary.params,
            # Fractions, as in the other experiments' CSVs; the tables quote percent.
            "test_error": round(summary.test_error, 4),
            "paper": _fraction(PAPER_TABLE6.get(cfg.model.name)),
            "reference_pytorch": _fraction(REFERENCE_TABLE6.get(cfg.model.name)),
            **_provenance(summary),
        }
        for cfg, _, summary in _finished(cfgs)
    ]
    out = {"csv": figures.write_csv(options.result_file(0), rows)}
    log.info(figures.table(rows))
    return out


RUNNERS = {"degradation": degradation, "responses": responses, "shortcuts": shortcuts, "table6": table6}
