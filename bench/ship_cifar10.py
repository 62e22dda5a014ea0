"""Makes a finished CIFAR-10 run a net this package ships (`build_model(name, weights="cifar10")`).

    .venv/bin/python bench/ship_cifar10.py RUN_DIR [--recipe "train.py --flagfile=... --time_budget=60"]
        [--weights_dir DIR] [--data_dir DIR]

Writes the run's final weights as `<name>_cifar10.weights.h5` and its record as `<name>_cifar10.json`
into keras_resnet/models/weights/ (or --weights_dir), each atomically (`files`); see that folder's
README. The record's test errors are measured here, from raw test pixels through the shipped file
as `build_model(name, weights="cifar10")` builds it: single-view and flip-averaged. The recipe is
--recipe, or the run's flags that differ from the defaults. `bench/models_table.py` then writes
README's model table from the records.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from keras_resnet import runtime  # noqa: E402

runtime.start_command()  # first: TensorFlow starts with oneDNN on, and quietly

# isort: split

import numpy as np  # noqa: E402

from keras_resnet import build_model, data, files  # noqa: E402
from keras_resnet.config import TrainConfig, flag_line  # noqa: E402
from keras_resnet.data.info import DataInfo  # noqa: E402
from keras_resnet.models import pretrained  # noqa: E402
from keras_resnet.rundir import RunDir  # noqa: E402


def ship(
    run_dir: str | os.PathLike,
    weights_dir: str | os.PathLike | None = None,
    *,
    recipe: str = "",
    data_dir: str | None = None,
) -> pathlib.Path:
    """The shipped weights file of the finished CIFAR-10 run in `run_dir`, written with its record;
    a ValueError (one line) when `run_dir` is not such a run."""
    run = RunDir(run_dir)
    try:
        summary, info = run.read_summary(), DataInfo.load(run.path)
        config = run.read_config()
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{run.path} is not a finished run with a readable record ({err}); nothing to ship."
        ) from None
    if summary is None or config is None or config.data.dataset != pretrained.CIFAR10:
        raise ValueError(f"{run.path} is not a finished CIFAR-10 run: nothing to ship.")
    spec = config.model.spec
    default = pretrained.CIFAR_BUILD
    build = {k: v for k in default if (v := getattr(config.model, k)) and v != default[k]}
    net = build_model(spec.name, family=spec.family, **build)
    net.set_weights(run.load_model(compile=False).get_weights())  # the same network: not the optimizer
    weights, record_path = pretrained.cifar10_files(spec.name, weights_dir)
    weights.parent.mkdir(parents=True, exist_ok=True)
    with files.replacing(weights) as tmp:
        net.save_weights(tmp)
    single, flipped = _test_errors(spec, build, weights, info.mean, data_dir or config.data.data_dir)
    record = pretrained.Cifar10Record(
        name=spec.name,
        weights=weights,
        mean=info.mean,
        test_error=single,
        tta_test_error=flipped,
        data_sha256=summary.data_sha256,
        steps=summary.steps,
        build=build,
        class_names=info.class_names,
        train_examples=info.train_examples,
        recipe=recipe or _recipe(config),
        wall_time_s=round(summary.wall_time_s, 1),
        cpu=summary.cpu,
        precision=summary.precision,
        params=summary.params,
        macs=summary.macs,
    )
    files.write_json(record_path, record.to_json(), indent=None)
    return weights


def _test_errors(spec, build: dict, weights: pathlib.Path, mean, data_dir: str) -> tuple[float, float]:
    """(single-view, flip-averaged) test error of the shipped file, from raw test pixels."""
    load = pretrained.Weights(lambda model: model.load_weights(weights), np.asarray(mean, np.float32))
    shipped = build_model(spec.name, family=spec.family, weights=load, **build)
    ds = data.load(pretrained.CIFAR10, data_dir=data_dir)
    examples = [ds.test_example(i) for i in range(ds.test_examples)]
    raw = np.stack([image for image, _ in examples])
    labels = np.array([label for _, label in examples])
    plain = shipped.predict(raw, batch_size=500, verbose=0)
    mirrored = shipped.predict(raw[:, :, ::-1], batch_size=500, verbose=0)
    return tuple(round(float(np.mean(p.argmax(-1) != labels)), 5) for p in (plain, (plain + mirrored) / 2))


def _recipe(config: TrainConfig) -> str:
    """The run's training flags that differ from the defaults, as train.py takes them."""
    default = TrainConfig().training_fields()
    changed = {k: v for k, v in config.training_fields().items() if v != default.get(k) and k != "data_dir"}
    return " ".join(["train.py", *(flag_line(k, v) for k, v in changed.items())])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model_dir", type=pathlib.Path, help="a finished train.py --dataset=cifar10 run")
    parser.add_argument("--weights_dir", type=pathlib.Path, help="default: keras_resnet/models/weights")
    parser.add_argument("--recipe", default="", help="the command that trained it (default: its flags)")
    parser.add_argument("--data_dir", help="where CIFAR-10 is (default: the run's --data_dir)")
    args = parser.parse_args(argv)
    try:
        print(ship(args.model_dir, args.weights_dir, recipe=args.recipe, data_dir=args.data_dir))
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
