"""The training curves of a run (`curves.png`), drawn from its `history.csv` as the paper's Fig. 6.

Matplotlib with the Agg backend (no display needed); figures are written atomically.
"""

from __future__ import annotations

import csv
import pathlib

from keras_resnet import files


def lr_change_steps(rows: list[dict[str, str]]) -> list[int]:
    """The steps after which the learning rate jumped, from history rows.

    Exact where the run logged them (`lr_changes`); in older files, the last logged step before
    each jump of 1.5x or more (so a cosine schedule's gradual decay is not marked).
    """
    if rows and "lr_changes" in rows[0]:
        return [int(s) for r in rows for s in (r.get("lr_changes") or "").split()]
    logged = [(int(r["step"]), float(r["lr"])) for r in rows if r.get("lr") not in (None, "")]
    return [
        step
        for (step, prev), (_, cur) in zip(logged, logged[1:], strict=False)
        if min(prev, cur) > 0 and max(prev, cur) >= 1.5 * min(prev, cur)
    ]


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(history_csv: str | pathlib.Path, png: str | pathlib.Path, title: str = "") -> pathlib.Path:
    """Top-1 error (train, validation, test) and loss against iterations, as the paper's Fig. 6."""
    plt = pyplot()
    with open(history_csv) as f:
        rows = list(csv.DictReader(f))

    def column(key):
        pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, (ax_err, ax_loss) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for key, label, style in (
        ("error", "train", "--"),
        ("val_error", "validation", "-."),
        ("test_error", "test", "-"),
    ):
        for ax, name, scale in ((ax_err, key, 100), (ax_loss, key.replace("error", "loss"), 1)):
            steps, values = column(name)
            if steps:  # a set scored a few times only (the test set of a timed run) gets markers
                marker = "o" if len(steps) < 4 else ""
                ax.plot(steps, [scale * v for v in values], style, label=label, marker=marker)
    _mark_lr_drops(rows, (ax_err, ax_loss))
    ax_err.set(xlabel="iterations", ylabel="top-1 error (%)", title=title or "error")
    ax_loss.set(xlabel="iterations", ylabel="loss (log scale)", title="loss (incl. weight decay for train)")
    if ax_loss.lines:
        ax_loss.set_yscale("log")
    for ax in (ax_err, ax_loss):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    return files.save_figure(fig, png)


def _mark_lr_drops(rows: list[dict[str, str]], axes) -> None:
    """A dotted line at each learning-rate change, labelled with the new rate on the first axis."""
    lrs = [(int(r["step"]), float(r["lr"])) for r in rows if r.get("lr") not in (None, "")]
    for step in lr_change_steps(rows):
        after = next((lr for s, lr in lrs if s > step), None)
        for ax in axes:
            ax.axvline(step, color="grey", lw=0.6, ls=":")
        if after is not None:
            ax = axes[0]
            ax.text(
                step,
                0.98,
                f" lr {after:g}",
                transform=ax.get_xaxis_transform(),
                fontsize=7,
                color="grey",
                va="top",
                ha="left",
            )
