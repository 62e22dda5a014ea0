"""The experiments' outputs: CSV files, a plain-text table, and the figures in the paper's layouts.

Every file is written atomically; every figure names its dataset in its title.
"""

from __future__ import annotations

import csv
import io
import pathlib
from typing import Any

import numpy as np

from keras_resnet import files, plots
from keras_resnet.experiments.options import PAPER_TABLE3
from keras_resnet.models import specs


def write_csv(path: pathlib.Path, rows: list[dict[str, Any]]) -> pathlib.Path:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return files.write_text(path, buffer.getvalue())


def table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no finished run yet)"
    keys = list(rows[0])
    lines = ["  ".join(f"{k:>12}" for k in keys)]
    lines += ["  ".join(f"{v!s:>12}" for v in r.values()) for r in rows]
    return "\n".join(lines)


def shortcut_summary(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | shortcut | params | val error, mean ± std (%) | seeds | Table 3, ResNet-34 ImageNet |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        for option in specs.SHORTCUTS:
            errors = [100 * r["val_error"] for r in rows if r["model"] == model and r["shortcut"] == option]
            if not errors:
                continue
            params = next(r["params"] for r in rows if r["model"] == model and r["shortcut"] == option)
            spread = f" ± {np.std(errors, ddof=1):.2f}" if len(errors) > 1 else ""
            lines.append(
                f"| {model} | {option} | {params:,} | {np.mean(errors):.2f}{spread} | {len(errors)} | "
                f"{PAPER_TABLE3[option]:.2f} |"
            )
    return "\n".join(lines) + "\n"


def plot_degradation(
    curves: dict[str, list[dict]], path: pathlib.Path, budget: int, dataset: str
) -> pathlib.Path:
    """Fig. 6's layout: plain nets left, residual right; training error dashed, test error bold."""
    plt = plots.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True, layout="constrained")
    colors = {20: "tab:orange", 32: "tab:cyan", 44: "tab:green", 56: "tab:red", 110: "tab:purple"}
    for ax, kind in zip(axes, ("plain", "resnet"), strict=True):
        for model, rows in curves.items():
            if not model.startswith(kind):
                continue
            depth = specs.get_spec(model).depth
            steps = [int(r["step"]) for r in rows]
            color = colors.get(depth)
            ax.plot(steps, [100 * float(r["error"]) for r in rows], "--", color=color, lw=1)
            test = [(int(r["step"]), 100 * float(r["test_error"])) for r in rows if r.get("test_error")]
            ax.plot(*zip(*test, strict=True), "-", color=color, lw=2.2, label=f"{kind}-{depth}")
        ax.set(
            xlabel="iterations",
            title=f"{'plain' if kind == 'plain' else 'ResNet'} on {dataset} ({budget:,} iterations)",
        )
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    axes[0].set_ylabel("error (%): training dashed, test bold")
    return files.save_figure(fig, path)


def plot_responses(rows: list[dict[str, Any]], path: pathlib.Path, dataset: str) -> pathlib.Path:
    """Fig. 7's layout: std by layer index (top) and sorted by magnitude (bottom)."""
    plt = plots.pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5), layout="constrained")
    fig.suptitle(f"std of the 3x3 layers' responses, {dataset} test set")
    for model in dict.fromkeys(r["model"] for r in rows):
        stds = [r["std"] for r in rows if r["model"] == model]
        style = "--" if model.startswith("plain") else "-"
        top.plot(range(1, len(stds) + 1), stds, style, label=model)
        bottom.plot(range(1, len(stds) + 1), sorted(stds, reverse=True), style, label=model)
    # Log scale: a net whose early BN scales grew (plain-56 after a blow-up) reaches std 20, and a
    # linear axis would flatten the differences around 1 that Fig. 7 is about.
    top.set(xlabel="layer index (original)", ylabel="std (log scale)", yscale="log")
    bottom.set(xlabel="layer index (sorted by magnitude)", ylabel="std (log scale)", yscale="log")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return files.save_figure(fig, path)
