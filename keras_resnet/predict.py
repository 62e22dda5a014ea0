"""Classifies image files with a trained run: `python -m keras_resnet.predict --model_dir=DIR FILE...`.

    python -m keras_resnet.predict --model_dir=runs/quickstart digit.png photo.jpg --top_k=3

prints, for each file, its most probable classes with their probabilities. The files go through
the same steps as a request to the run's TF Serving export (`serving_default`): the same checks
of their bytes, the recipe's evaluation view, the run's test-time views (`keras_resnet.load`).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m keras_resnet.predict", description=__doc__.split("\n")[0]
    )
    parser.add_argument("files", nargs="+", help="JPEG or PNG files")
    parser.add_argument("--model_dir", required=True, help="a finished run's folder (train.py --model_dir)")
    parser.add_argument("--top_k", type=int, default=5, help="classes to print per image")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error(f"--top_k must be >= 1, got {args.top_k}")
    missing = [f for f in args.files if not pathlib.Path(f).is_file()]
    if missing:
        parser.error(f"no such file: {', '.join(missing)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    from keras_resnet import runtime

    runtime.start_command()
    import tensorflow as tf

    from keras_resnet.serving.loading import load

    try:
        classifier = load(args.model_dir)
    except (OSError, ValueError) as err:
        print(f"predict: error: {err}", file=sys.stderr)
        return 1
    for path in args.files:
        try:
            (best,) = classifier.top_k(classifier.decode_files([path]), k=args.top_k)
        except tf.errors.InvalidArgumentError as err:  # the export's own refusal of bad bytes
            print(f"{path}: refused: {err.message.splitlines()[0]}", flush=True)
            continue
        print(f"{path}: " + ", ".join(f"{name} {p:.3f}" for name, p in best), flush=True)
    return 0


if __name__ == "__main__":
    from keras_resnet import interrupts

    code = 0
    with interrupts.ending_the_command("predict") as ending:  # one line, 130/143, nothing half-written
        code = main()
    code = ending.exit_code or code
    from keras_resnet import workarounds

    workarounds.exit_before_finalization(code)
    raise SystemExit(code)
