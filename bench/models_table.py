"""README's table of shipped CIFAR-10 nets, generated from their records (keras_resnet/models/weights).

    python bench/models_table.py                  # rewrites the table in README.md
    python bench/models_table.py --readme x.md    # another file with the same markers (the tests)

One row per `<name>_cifar10.json` (`pretrained.Cifar10Record`): its size, the test accuracy measured
when it was shipped (`bench/ship_cifar10.py`), the command that trained it, where and how long.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from keras_resnet import runtime  # noqa: E402

runtime.start_command()  # first: TensorFlow starts quietly

# isort: split

from keras_resnet.models import pretrained  # noqa: E402

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BEGIN = "<!-- shipped nets: written by python bench/models_table.py from keras_resnet/models/weights -->"
END = "<!-- end of shipped nets -->"
HEADER = (
    '| `build_model(..., weights="cifar10")` | parameters | multiply-adds | test accuracy | with flip TTA '
    "| trained with | training | data_sha256 |\n|---|---:|---:|---:|---:|---|---|---|"
)
NONE = (
    'None is shipped yet: `weights="cifar10"` is refused until a run is shipped '
    "(`python bench/ship_cifar10.py RUN_DIR`). Until then, start from a run of your own: `--weights=RUN_DIR`."
)


def _accuracy(error: float | None) -> str:
    return "" if error is None else f"{100 * (1 - error):.2f}%"


def row(record: pretrained.Cifar10Record) -> str:
    """The record as one table row."""
    minutes = record.wall_time_s / 60
    took = f"{minutes:.0f} min, {record.cpu}, {record.precision}" if record.wall_time_s else ""
    cells = (
        f"`{record.name}`",
        f"{record.params:,}",
        f"{record.macs / 1e6:.1f}M",
        _accuracy(record.test_error),
        _accuracy(record.tta_test_error),
        f"`{record.recipe}` ({record.steps:,} steps)" if record.recipe else f"{record.steps:,} steps",
        took,
        f"`{record.data_sha256[:8]}`",
    )
    return "| " + " | ".join(cells) + " |"


def render(weights_dir: pathlib.Path | None = None) -> str:
    """The block between the markers: the table, or the line saying none is shipped."""
    names = pretrained.shipped_cifar10(weights_dir)
    if not names:
        return NONE
    rows = [row(pretrained.cifar10_record(name, weights_dir)) for name in names]
    return "\n".join([HEADER, *rows])


def rewrite(readme: pathlib.Path, weights_dir: pathlib.Path | None = None) -> None:
    """Replaces the block between the markers in `readme`, atomically."""
    text = readme.read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise SystemExit(f"{readme}: expected the markers {BEGIN!r} and {END!r} once each")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    partial = readme.with_name(readme.name + ".partial")
    partial.write_text(f"{head}{BEGIN}\n{render(weights_dir)}\n{END}{tail}")
    os.replace(partial, readme)  # never a half-written README


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=pathlib.Path, default=README, help="the file holding the markers")
    parser.add_argument("--weights_dir", type=pathlib.Path, help="default: keras_resnet/models/weights")
    args = parser.parse_args(argv)
    rewrite(args.readme, args.weights_dir)


if __name__ == "__main__":
    main()
