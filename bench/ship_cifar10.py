"""Makes a finished CIFAR-10 run a net this package ships (`build_model(name, weights="cifar10")`).

    .venv/bin/python bench/ship_cifar10.py runs/reproduction/64k/resnet20 [--weights_dir DIR]

Writes the run's final weights as `<name>_cifar10.weights.h5` and its record (mean image, test
error, the training data's data_sha256, steps) as `<name>_cifar10.json` into
keras_resnet/models/weights/ (or --weights_dir), each atomically (`files`); see that folder's
README for the format.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from keras_resnet import runtime  # noqa: E402

runtime.start_command()  # first: TensorFlow starts with oneDNN on, and quietly

# isort: split

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_resnet import build_model, files  # noqa: E402
from keras_resnet.models import pretrained, specs  # noqa: E402
from keras_resnet.rundir import RunDir  # noqa: E402


def ship(run_dir: str | os.PathLike, weights_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The shipped weights file of the finished CIFAR-10 run in `run_dir`, written with its record;
    a ValueError (one line) when `run_dir` is not such a run."""
    run = RunDir(run_dir)
    try:
        config, summary, info = (json.loads(p.read_text()) for p in (run.config, run.summary, run.data_info))
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{run.path} is not a finished run with a readable record ({err}); nothing to ship."
        ) from None
    if config.get("dataset") != pretrained.CIFAR10 or summary.get("test_error") is None:
        raise ValueError(f"{run.path} is not a finished CIFAR-10 run with a test error: nothing to ship.")
    default = pretrained.CIFAR_BUILD
    build = {k: config[k] for k in ("shortcut", "padding") if config.get(k) and config[k] != default[k]}
    trained = keras.saving.load_model(run.model, compile=False)
    spec = specs.get_spec(config["model"], config.get("family") or None)
    net = build_model(spec.name, family=spec.family, **build)
    net.set_weights(trained.get_weights())  # the same network: only the optimizer stays behind
    weights, record = pretrained.cifar10_files(spec.name, weights_dir)
    weights.parent.mkdir(parents=True, exist_ok=True)
    with files.replacing(weights) as tmp:
        net.save_weights(tmp)
    shipped = {
        "mean": np.asarray(info["mean"], np.float32).round(4).tolist(),
        "test_error": round(float(summary["test_error"]), 5),
        "data_sha256": summary.get("data_sha256", ""),
        "steps": summary["steps"],
        **({"build": build} if build else {}),
    }
    files.write_json(record, shipped, indent=None)
    return weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model_dir", type=pathlib.Path, help="a finished train.py --dataset=cifar10 run")
    parser.add_argument("--weights_dir", type=pathlib.Path, help="default: keras_resnet/models/weights")
    args = parser.parse_args(argv)
    try:
        print(ship(args.model_dir, args.weights_dir))
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
