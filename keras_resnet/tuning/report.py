"""A search's results: one row per trial, as `results.csv`, `results.md` and `results.png`.

Every file is written atomically; a figure that fails to draw never loses the tables.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import pathlib
from typing import Any

import keras_tuner

from keras_resnet import files, plots
from keras_resnet.console import duration
from keras_resnet.tuning.space import SEARCHABLE

log = logging.getLogger(__name__)

OBJECTIVE = "val_error"


def trial_rows(tuner: keras_tuner.Tuner, space: dict[str, tuple]) -> list[dict[str, Any]]:
    """One row per trial, in trial order: its values, status and metrics."""
    rows = []
    for trial_id in sorted(tuner.oracle.trials):
        trial = tuner.oracle.trials[trial_id]
        values = trial.hyperparameters.values

        def metric(name, trial=trial):
            return float(trial.metrics.get_last_value(name)) if trial.metrics.exists(name) else None

        row = {"trial": trial_id, "status": trial.status}
        row.update({name: values.get(name, "") for name in space})
        error = metric(OBJECTIVE)
        row.update(
            val_error=error,
            steps=metric("steps"),
            params=metric("params"),
            macs=metric("macs"),
            train_time_s=metric("train_time_s"),
            train_images_per_sec=metric("train_images_per_sec"),
        )
        for key in ("steps", "params", "macs"):
            row[key] = None if row[key] is None else int(row[key])
        rows.append(row)
    return rows


def write_results(
    rows: list[dict[str, Any]], directory: str | os.PathLike, title: str = ""
) -> dict[str, pathlib.Path]:
    """Writes `results.csv`, `results.md` and `results.png` (each atomically) and returns their paths."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {ext: directory / f"results.{ext}" for ext in ("csv", "md", "png")}
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    files.write_text(paths["csv"], buffer.getvalue())
    files.write_text(paths["md"], markdown_table(rows, title))
    try:
        _plot(rows, paths["png"], title)
    except Exception as err:  # the table is the result; the figure only shows it
        log.info(f"[tune] could not draw {paths['png']} ({type(err).__name__}: {err})")
    return paths


def markdown_table(rows: list[dict[str, Any]], title: str = "") -> str:
    """The trials as a Markdown table, best validation error in bold, with a one-line verdict."""
    if not rows:
        return f"{title}\n\nNo trial yet.\n" if title else "No trial yet.\n"
    hp_names = [k for k in rows[0] if k in SEARCHABLE]
    best = _best_row(rows)
    header = ["trial", *hp_names, "val error", "steps", "params", "mult-adds", "time", "img/s", "status"]
    lines = [f"# {title}", ""] if title else []
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for row in rows:
        error = "" if row["val_error"] is None else f"{100 * row['val_error']:.2f}%"
        if row is best:
            error = f"**{error}**"
        steps = "" if row["steps"] is None else f"{row['steps']:,}"
        cells = [row["trial"], *(format_value(row[n]) for n in hp_names), error, steps]
        cells += [
            _count_text(row["params"]),
            _millions(row["macs"]),
            ("" if row["train_time_s"] is None else duration(row["train_time_s"])),
            "" if row["train_images_per_sec"] is None else f"{row['train_images_per_sec']:.0f}",
            row["status"],
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    if best is not None:
        chosen = ", ".join(f"{n}={format_value(best[n])}" for n in hp_names if best[n] != "")
        lines += [
            "",
            f"Best: trial {best['trial']} ({chosen}), validation error {100 * best['val_error']:.2f}%.",
        ]
    return "\n".join(lines) + "\n"


def _best_row(rows):
    done = [r for r in rows if r["status"] == "COMPLETED" and r["val_error"] is not None]
    return min(done, key=lambda r: r["val_error"]) if done else None


def _label(row, hp_names) -> str:
    return ", ".join(f"{n}={format_value(row[n])}" for n in hp_names if row[n] != "") or row["trial"]


def _plot(rows, path: pathlib.Path, title: str) -> None:
    """A horizontal bar per completed trial: validation error, labelled with its values and size."""
    plt = plots.pyplot()
    done = [r for r in rows if r["status"] == "COMPLETED" and r["val_error"] is not None]
    hp_names = [k for k in (rows[0] if rows else {}) if k in SEARCHABLE]
    best = _best_row(rows)
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.45 * max(len(done), 1)))
    labels = [_label(r, hp_names) for r in done]
    errors = [100 * r["val_error"] for r in done]
    colors = ["tab:green" if r is best else "tab:blue" for r in done]
    bars = ax.barh(range(len(done)), errors, color=colors)
    ax.set_yticks(range(len(done)), labels)
    ax.invert_yaxis()
    for bar, row in zip(bars, done, strict=True):
        ax.annotate(
            f" {bar.get_width():.2f}%  ({_count_text(row['params'])} params)",
            (bar.get_width(), bar.get_y() + bar.get_height() / 2),
            va="center",
            fontsize=8,
        )
    ax.set_xlabel("final validation error (%)")
    ax.set_xlim(0, max(errors + [1]) * 1.35)
    ax.set_title(title or "keras-tuner search", fontsize=10)
    fig.tight_layout()
    files.save_figure(fig, path)


def space_text(space: dict[str, tuple]) -> str:
    """`shortcut=A/B/C, depth=20/56`: a search space in one line."""
    return ", ".join(f"{k}={'/'.join(format_value(v) for v in vs)}" for k, vs in space.items())


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _count_text(n) -> str:
    return "" if n is None else f"{n:,}"


def _millions(n) -> str:
    return "" if n is None else f"{n / 1e6:.1f}M"


def report_failures(kt: keras_tuner.Tuner) -> None:
    """One line per failed trial: its reason, the last line of the traceback keras-tuner kept."""
    for trial in kt.oracle.trials.values():
        if trial.status in ("FAILED", "INVALID") and trial.message:
            reason = trial.message.strip().splitlines()[-1]
            reason = reason.split(": ", 1)[1] if reason.split(": ", 1)[0].endswith("Error") else reason
            log.info(f"[tune] trial {trial.trial_id} failed: {reason}")
