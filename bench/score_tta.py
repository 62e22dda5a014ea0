"""What each test-time augmentation buys: one finished run's model scored under every --tta mode.

    .venv/bin/python bench/score_tta.py runs/val26 [--json results/time_to_accuracy/tta_val26.json]

Loads `<model_dir>/model.keras` (the final model, or its weight average) and its `config.json`, and
scores the model on the run's held-out split when it was trained with --validation_split (the 45k/5k
split, where a recipe's choices are made), else on the test split, with each mode of
`models.TTA_VIEWS` ("none", "flip", "flip_translate"). One training run answers the question, since
test-time views change only the evaluation. Prints a table and, with --json, writes it.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from keras_resnet import runtime  # noqa: E402

runtime.start_command()  # first: TensorFlow starts with oneDNN on, and quietly

# isort: split

import keras  # noqa: E402

from keras_resnet import files, models, training  # noqa: E402
from keras_resnet.config import TrainConfig  # noqa: E402
from keras_resnet.training import optimization  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model_dir", type=pathlib.Path, help="a finished train.py run")
    parser.add_argument("--json", type=pathlib.Path, help="also write the table here")
    args = parser.parse_args(argv)
    for name in ("model.keras", "config.json"):
        if not (args.model_dir / name).exists():
            parser.exit(2, f"error: {args.model_dir / name} is missing: give a finished --model_dir.\n")
    cfg = TrainConfig.from_json(json.loads((args.model_dir / "config.json").read_text()))
    strategy = training.strategy_for(cfg)
    datasets = training.load_data(cfg, strategy)
    split, batches = (
        ("validation", datasets.validation) if cfg.data.validation_split else ("test", datasets.test)
    )
    rows = []
    with training.precision_policy(cfg.run.precision):
        model = keras.saving.load_model(args.model_dir / "model.keras", safe_mode=True, compile=False)
        for mode in models.TTA_VIEWS:
            scored = optimization.compile_for_evaluation(
                models.with_test_time_augmentation(model, mode), cfg.optim
            )
            start = time.perf_counter()
            result = scored.evaluate(batches, verbose=0, return_dict=True)
            seconds = round(time.perf_counter() - start, 1)
            rows.append({"tta": mode, "error": round(float(result["error"]), 4), "s": seconds})
    print(f"{args.model_dir}: {cfg.model.name}, {split} split")
    print(f"{'tta':<16}{'error':>8}{'seconds':>9}")
    for row in rows:
        print(f"{row['tta']:<16}{row['error']:>8.2%}{row['s']:>9.1f}")
    if args.json:
        files.write_json(args.json, {"model_dir": str(args.model_dir), "split": split, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
