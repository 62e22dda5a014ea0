"""Classifies image files with a trained run: `python -m keras_resnet.predict --model_dir=DIR FILE...`.

    python -m keras_resnet.predict --model_dir=runs/quickstart digit.png photo.jpg --top_k=3
    python -m keras_resnet.predict --model_dir=runs/quickstart photos/ --json > predictions.jsonl

prints, for each file, its most probable classes with their probabilities; a folder stands for
the .jpg, .jpeg and .png files under it (recursively, in sorted order). The files go through the
same steps as a request to the run's TF Serving export (`serving_default`): the same checks of
their bytes, the recipe's evaluation view, the run's test-time views (`keras_resnet.load`). A
file the export would refuse is printed with the export's reason, in one line.

--json prints one JSON object per file and line instead: {"file": ..., "classes": [[name,
probability], ...]} or {"file": ..., "refused": reason}.

Exit status: 0 every file classified, 1 a file was refused (stderr says how many) or the run
cannot be loaded, 2 bad arguments (a missing file, a folder without images).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence

from keras_resnet.interrupts import ExitCode

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _images_in(folder: pathlib.Path) -> tuple[list[str], int]:
    """The image files under `folder` (recursively, sorted), and how many other files it holds."""
    found = sorted(p for p in folder.rglob("*") if p.is_file())
    images = [str(p) for p in found if p.suffix.lower() in IMAGE_SUFFIXES]
    return images, len(found) - len(images)


def _expand(parser: argparse.ArgumentParser, names: Sequence[str]) -> list[str]:
    """The files named, each folder replaced by its images; a missing one refuses the command."""
    missing = [name for name in names if not pathlib.Path(name).exists()]
    if missing:
        parser.error(f"no such file: {', '.join(missing)}")
    files = []
    for name in names:
        path = pathlib.Path(name)
        if not path.is_dir():
            files.append(name)
            continue
        images, others = _images_in(path)
        if not images:
            parser.error(f"{name} is a folder with no {'/'.join(IMAGE_SUFFIXES)} files under it")
        if others:
            print(
                f"predict: {name}: left out {others} files that are not {'/'.join(IMAGE_SUFFIXES)}",
                file=sys.stderr,
            )
        files.extend(images)
    return files


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m keras_resnet.predict", description=__doc__.split("\n")[0]
    )
    parser.add_argument("files", nargs="+", help="JPEG or PNG files, or folders of them (recursively)")
    parser.add_argument("--model_dir", required=True, help="a finished run's folder (train.py --model_dir)")
    parser.add_argument("--top_k", type=int, default=5, help="classes to print per image")
    parser.add_argument("--json", action="store_true", help="one JSON object per file and line")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error(f"--top_k must be >= 1, got {args.top_k}")
    args.files = _expand(parser, args.files)
    return args


def _line(path: str, best: list[tuple[str, float]] | None, refused: str, as_json: bool) -> str:
    if as_json:
        answer = {"refused": refused} if best is None else {"classes": [[n, round(p, 6)] for n, p in best]}
        return json.dumps({"file": path, **answer})
    if best is None:
        return f"{path}: refused: {refused}"
    return f"{path}: " + ", ".join(f"{name} {p:.3f}" for name, p in best)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    from keras_resnet import runtime

    runtime.start_command()
    import tensorflow as tf

    from keras_resnet.serving.decode import refusal
    from keras_resnet.serving.loading import load

    try:
        classifier = load(args.model_dir)
    except (OSError, ValueError) as err:
        print(f"predict: error: {err}", file=sys.stderr)
        return ExitCode.ERROR
    refused = 0
    for path in args.files:
        best, reason = None, ""
        try:
            (best,) = classifier.top_k(classifier.decode_files([path]), k=args.top_k)
        except tf.errors.InvalidArgumentError as err:  # the export's own refusal of bad bytes
            reason = refusal(err.message)
        except (tf.errors.NotFoundError, tf.errors.PermissionDeniedError) as err:
            reason = err.message.strip().splitlines()[0]
        refused += best is None
        print(_line(path, best, reason, args.json), flush=True)
    if refused:
        print(f"predict: {refused} of {len(args.files)} files refused", file=sys.stderr)
    return ExitCode.ERROR if refused else ExitCode.OK


if __name__ == "__main__":
    from keras_resnet.interrupts import run_command

    run_command("predict", main)  # a signal: one line, 130/143, nothing half-written
