"""--time_budget: the plan's arithmetic, and the probes, plan and resume on the embedded digits."""

from __future__ import annotations

import json
import math
import time

import pytest
from conftest import TINY

from keras_resnet import training
from keras_resnet.config import ConfigError, TrainConfig
from keras_resnet.training import budget

# The fast preset's own flags (configs/cifar10_resnet20_fast.cfg) that the plan scales.
FAST = dict(
    batch_size=256,
    epochs=30,
    low_res_size=24,
    low_res_epochs=15,
    lr_schedule="linear",
    lr_warmup_steps=878,
    tta="flip",
    model_dir="unused",
)


def test_the_plan_is_the_longest_run_that_fits_in_the_flags_proportions():
    # 195 steps of 256 = 49,920 images an epoch: 49.92 s at 1,000 img/s (24 px), 71.31 s at 700
    # (32 px); the test set once with 2 views at 2 x 700 views/s: 14.29 s; 20 s of start-up and
    # saving, 0.5 s a checkpoint after every epoch but the last.
    # 27 epochs (14 at 24 px): 20 + 698.9 + 927.1 + 13.0 + 14.3 = 1673.3 s; 28 (14 + 14): 1745.1 s.
    speeds = budget.Speeds(
        low_res_images_per_sec=1000.0,
        full_images_per_sec=700.0,
        checkpoint_s=0.5,
        run_overhead_s=20.0,
        train_examples=50_000,
        test_examples=10_000,
        precision="float32",
    )
    cfg = TrainConfig.of(**FAST)
    assert budget.predicted_seconds(cfg, 27, speeds) == pytest.approx(1673.3, abs=0.1)
    assert budget.predicted_seconds(cfg, 28, speeds) == pytest.approx(1745.1, abs=0.1)
    # 1,700 s usable once the margin is kept free: the budget fast30e was given by hand.
    fields = budget.fit(cfg, 1700.0 / (1 - budget.MARGIN), speeds)
    assert fields == {
        "epochs": 27,
        "train_steps": 0,
        "low_res_epochs": 14,  # half, rounded up
        "lr_warmup_steps": 790,  # 15% of the steps, as 878 of 5,850
        "eval_test_every": 27,  # the test set once, at the end
        "precision": "float32",
    }
    with pytest.raises(ConfigError, match="--time_budget: 1.0 minutes are left, and a run of one epoch"):
        budget.fit(cfg, 60.0, speeds)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(lr_milestones=(100,)), "--lr_milestones"),
        (dict(distribution="multi_worker"), "for a cluster"),
        (dict(batch_size=0), "--batch_size"),
    ],
)
def test_a_plan_that_cannot_hold_is_refused_before_measuring(changes, message, tmp_path):
    cfg = TrainConfig.of(**{**TINY, **changes}, model_dir=str(tmp_path / "run"), epochs=3)
    with pytest.raises(ConfigError, match=message):
        budget.plan(cfg, 5.0, started=time.time())
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_probes_plan_and_a_rerun_continues_the_plan(tmp_path, monkeypatch, capsys):
    model_dir = tmp_path / "run"
    cfg = TrainConfig.of(
        **TINY, model_dir=str(model_dir), epochs=10, lr_schedule="linear", lr_warmup_steps=20
    )
    speeds = budget.measure(cfg)  # a real 25-step run of this config in a scratch directory
    assert speeds.full_images_per_sec > 0 and speeds.run_overhead_s > 0 and speeds.checkpoint_s >= 0
    assert speeds.low_res_images_per_sec == speeds.full_images_per_sec  # no --low_res_size
    assert speeds.precision == "float32" and speeds.test_examples > 0
    assert not list(tmp_path.iterdir())  # the probe left nothing behind

    # Leave exactly the time of 3.5 epochs (MARGIN included): the plan must be 3 epochs.
    three, four = (budget.predicted_seconds(cfg, e, speeds) for e in (3, 4))
    seconds = (three + four) / 2 / (1 - budget.MARGIN)
    monkeypatch.setattr(budget, "measure", lambda _: speeds)  # measured above: not twice
    with pytest.raises(ConfigError, match=r"Give at least --time_budget=\d+, or --epochs\."):
        budget.plan(cfg, 0.01, started=time.time())
    assert not model_dir.exists()
    planned = budget.plan(cfg, 10.0, started=time.time() - (600 - seconds))
    steps_per_epoch = speeds.train_examples // cfg.data.batch_size
    assert (planned.optim.epochs, planned.optim.lr_warmup_steps) == (
        3,
        6,
    )  # 20 of 10 epochs' steps -> 3 epochs' share
    assert planned.run.eval_test_every == math.ceil(3 * steps_per_epoch / cfg.run.checkpoint_steps)
    saved = json.loads((model_dir / "budget.json").read_text())
    assert saved["minutes"] == 10.0 and saved["plan"]["epochs"] == 3
    assert "3 epochs, warmup 6 steps, the test set evaluated at the end" in capsys.readouterr().out

    summary = training.run(planned, verbose=0)
    assert summary.steps == 3 * steps_per_epoch and summary.test_error is not None

    # The same command again: the saved plan, not a new measurement (which would plan otherwise).
    def no_measuring(_):
        raise AssertionError("a rerun measured again")

    monkeypatch.setattr(budget, "measure", no_measuring)
    again = budget.plan(cfg, 10.0, started=time.time())
    assert again == planned and "continuing the plan" in capsys.readouterr().out
    assert training.run(again, verbose=0).steps == summary.steps  # finished: nothing to do
    with pytest.raises(ConfigError, match=r"planned for --time_budget=10\.0"):
        budget.plan(cfg, 20.0, started=time.time())
    (model_dir / "budget.json").unlink()
    with pytest.raises(ConfigError, match="that --time_budget did not plan"):
        budget.plan(cfg, 10.0, started=time.time())
