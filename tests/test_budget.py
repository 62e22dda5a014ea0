"""--time_budget: the plan's arithmetic, the timeline it is measured on, and a planned run on the
embedded digits (measured on its own first steps, re-planned, resumed)."""

from __future__ import annotations

import csv
import dataclasses
import json
import time

import pytest
from conftest import REPO, TINY

from keras_resnet.config import ConfigError, TrainConfig
from keras_resnet.training import budget
from keras_resnet.training.budgetrecord import Saved

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
# 1,000 img/s at 24 px, 700 at 32 px, 0.5 s a checkpoint, 10 s a restart; 195 steps of 256 an epoch;
# measured at the first pause (step 40), the full size's speed estimated.
AT_40 = budget.Measured(
    low_res_images_per_sec=1000.0,
    full_images_per_sec=700.0,
    full_size_measured=False,
    checkpoint_s=0.5,
    restart_s=10.0,
    train_examples=50_000,
    test_examples=10_000,
    precision="float32",
    at_step=40,
)


def test_the_first_plan_is_the_most_epochs_that_fit_in_the_flags_proportions():
    # From step 40, two restarts to come (10 s each), the test set once with 2 views at 2 x 700
    # views/s (14.29 s), a checkpoint after every epoch but the last:
    # 27 epochs (14 at 24 px): 20 + (14 x 195 - 40) x 256 / 1000 + 13 x 195 x 256 / 700 + 13 + 14.29
    #   = 20 + 688.64 + 927.09 + 13 + 14.29 = 1663.0 s; 28 epochs (14 + 14): 1734.8 s.
    cfg = TrainConfig.of(**FAST)
    fields = budget.first_plan(cfg, 1700.0, AT_40)
    assert fields == budget.Plan(
        epochs=27,
        train_steps=0,
        low_res_epochs=14,  # half, rounded up
        lr_warmup_steps=790,  # 15% of the steps, as 878 of 5,850
        eval_test_every=27,  # the test set once, at the end
        precision="float32",
    )
    planned = fields.applied_to(cfg)
    assert budget.seconds_left(planned, AT_40, from_step=40, restarts=2) == pytest.approx(1663.0, abs=0.1)
    with pytest.raises(ConfigError, match="--time_budget: 1.0 minutes are left, and 1 epoch"):
        budget.first_plan(cfg, 60.0, AT_40)


def test_the_last_plan_is_the_most_steps_that_fit_keeping_low_resolution_and_warmup():
    cfg = TrainConfig.of(**FAST)
    first = budget.first_plan(cfg, 1700.0, AT_40)
    assert budget.second_pause(cfg, first, AT_40) == 2925
    # One epoch at 32 px done (step 14 x 195 + 195 = 2,925); 600 s left, one restart: 10 + 14.29 +
    # x x 256 / 700 + 0.5 x (ceil(x / 195) - 1) <= 600 holds for x = 1,563 more steps (599.9 s), not 1,564.
    at_2925 = dataclasses.replace(AT_40, at_step=2925, full_size_measured=True)
    last = budget.last_plan(cfg, first, 600.0, at_2925)
    assert last == dataclasses.replace(first, epochs=0, train_steps=4488, eval_test_every=4488)
    # A budget already spent ends the run where it is.
    assert budget.last_plan(cfg, first, 0.0, at_2925).train_steps == 2925


def test_the_timeline_times_steady_steps_and_checkpoints(monkeypatch):
    monkeypatch.setattr(budget, "WARMUP_STEPS", 5)  # steps 6-10 (but 9) and 16-20 are the steady ones
    timeline = budget.Timeline()
    # Global steps 1-20; 10 at low resolution; a chunk (checkpoint: +0.3 s) ends after step 8.
    # Low-res steps take 0.1 s, full-size ones 0.2 s, the first of each size 1 s (tracing).
    t, ends = 0.0, []
    for step in range(1, 21):
        t += 1.0 if step in (1, 11) else (0.1 if step <= 10 else 0.2)
        t += 0.3 if step == 9 else 0.0
        ends.append(t)
    timeline.ends, timeline.chunk_ends = ends, {8}
    assert timeline.step_seconds(10, low_res=True) == pytest.approx(0.1)
    assert timeline.step_seconds(10, low_res=False) == pytest.approx(0.2)
    assert timeline.checkpoint_seconds(0.1, 10) == pytest.approx(0.3)
    assert budget.Timeline().step_seconds(10, low_res=True) is None


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(lr_milestones=(100,)), "--lr_milestones"),
        (dict(distribution="multi_worker"), "for a cluster"),
        (dict(batch_size=0), "--batch_size"),
    ],
)
def test_a_plan_that_cannot_hold_is_refused_before_training(changes, message, tmp_path):
    cfg = TrainConfig.of(**{**TINY, **changes}, model_dir=str(tmp_path / "run"), epochs=3)
    with pytest.raises(ConfigError, match=message):
        budget.run(cfg, 5.0, started=time.time())
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_budget_run_measures_its_own_steps_replans_and_a_rerun_continues(tmp_path, capsys, monkeypatch):
    # Digits: 44 steps of 32 an epoch, a checkpoint after each; the flags' 10 epochs, 2 at 16 px.
    model_dir = tmp_path / "run"
    cfg = TrainConfig.of(
        **{**TINY, "checkpoint_steps": 44},
        model_dir=str(model_dir),
        epochs=10,
        low_res_size=16,
        low_res_epochs=2,
        lr_schedule="linear",
        lr_warmup_steps=40,
    )
    monkeypatch.setattr(budget, "MEASURE_STEPS", 40)  # inside the 88 steps at 16 px
    monkeypatch.setattr(budget, "WARMUP_STEPS", 5)
    # Far too little: measured, then refused with the budget that would do, the 40 steps kept.
    with pytest.raises(ConfigError, match=r"Give at least --time_budget=\d+, or --epochs\."):
        budget.run(cfg, 0.01, started=time.time())
    saved = json.loads((model_dir / "budget.json").read_text())
    assert saved["stage"] == "measuring" and saved["measured"]["at_step"] == budget.MEASURE_STEPS
    # The rest with this machine's measurements replaced by slow, fixed ones (0.4 img/s at 16 px, 0.2
    # at full size, nothing else), so that the plan does not depend on the machine's load. From step
    # 80 (all at 16 px), 3 epochs (1 at 16 px: the rest at full size) take (132 - 80) x 160 + 359 /
    # 0.4 = 9,217.5 s, 4 epochs 16,257.5 s.
    real = []

    def fixed(*args):
        real.append(measure(*args))
        slow = dict(low_res_images_per_sec=0.4, full_images_per_sec=0.2, checkpoint_s=0.0, restart_s=0.0)
        return dataclasses.replace(real[-1], **slow)

    measure = budget._measured
    monkeypatch.setattr(budget, "_measured", fixed)
    # 9,700 s usable: 3 epochs; then from step 124 (an epoch at full size) (9,700 - 897.5 - the
    # seconds spent) / 160 more steps: 54 (55 with none spent).
    minutes = 9700 / 60 / (1 - budget.MARGIN)
    began = time.time()
    summary = budget.run(cfg, minutes, started=began)  # measures again, from its checkpoint
    took = time.time() - began
    out = capsys.readouterr().out
    # This command resumed the refused one at step 40; its own re-plans (at 80, 124) are no resume,
    # and its time is the command's, beside the whole run's (the refused command's 40 steps too).
    assert summary.resumed_from_step == 40
    assert json.loads((model_dir / "summary.json").read_text())["resumed_from_step"] == 40
    # The command's time runs from its start through its re-plans, at least to its last history row
    # (written before the summary; whole seconds). Not bounded by the return's time: under -n 2 in
    # .ci/run the return came 46 s and 68 s after summaries that counted 25 s and 21 s; this bound
    # tells whether the summary or the way back lost them.
    with open(model_dir / "history.csv") as f:
        last_row = list(csv.DictReader(f))[-1]["time"]
    row_s = time.mktime(time.strptime(last_row, "%Y-%m-%dT%H:%M:%S")) - began
    assert 0 < row_s <= summary.command_time_s <= took  # the row's time is truncated to the second
    assert summary.wall_time_s > summary.command_time_s  # the refused command's 40 steps too
    assert f"{summary.steps} steps in " in out and "of them in this command" in out
    saved = json.loads((model_dir / "budget.json").read_text())
    plan = saved["plan"]
    # Both pauses measured this machine: 16 px steps from step 40, full-size ones after the switch.
    assert [(m.at_step, m.full_size_measured) for m in real] == [(80, False), (124, True)]
    assert all(m.low_res_images_per_sec > 4 and m.full_images_per_sec > 2 for m in real)
    assert "resuming at step 40" in out and "3 epochs (1 at 16 px)" in out
    assert "re-planned after the first epoch at full size" in out and saved["stage"] == "final"
    # The last plan: to the step, its low-resolution epochs and warmup the first's (12 of 132 steps).
    assert (plan["epochs"], plan["low_res_epochs"], plan["lr_warmup_steps"]) == (0, 1, 12)
    assert 124 + 50 <= plan["train_steps"] == summary.steps == summary.total_steps <= 124 + 55
    assert saved["predicted_end_s"] <= minutes * 60 * (1 - budget.MARGIN)
    # The plan is the run's recorded configuration, and the test set was read once, at the end.
    recorded = json.loads((model_dir / "config.json").read_text())
    assert (recorded["train_steps"], recorded["epochs"]) == (plan["train_steps"], 0)
    with open(model_dir / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r for r in rows if r.get("test_error")] == rows[-1:]
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(set(steps)) and steps[-1] == summary.steps  # no step replayed

    # The same command again continues the saved plan (finished: nothing to do).
    again = budget.run(cfg, minutes, started=time.time())
    assert again.steps == summary.steps and "continuing the plan" in capsys.readouterr().out
    with pytest.raises(ConfigError, match=f"planned for --time_budget={minutes}"):
        budget.run(cfg, 2 * minutes, started=time.time())
    with pytest.raises(ConfigError, match="different configuration"):
        budget.run(cfg.replace(learning_rate=0.05), minutes, started=time.time())
    (model_dir / "budget.json").unlink()
    with pytest.raises(ConfigError, match="that --time_budget did not plan"):
        budget.run(cfg, minutes, started=time.time())


# budget.json as the code wrote it before its records were dataclasses (issue 47), literally: a
# final plan (the digits: 1,438 training images, 44 steps of 32 an epoch) and one written before
# the run measured its own steps (no stage; the probes' speeds; issue 32), both to be continued.
FINAL_FILE = {
    "minutes": 5.0,
    "stage": "final",
    "plan": {
        "epochs": 0,
        "train_steps": 30,
        "low_res_epochs": 0,
        "lr_warmup_steps": 3,
        "eval_test_every": 30,
        "precision": "float32",
    },
    "measured": {
        "low_res_images_per_sec": 812.4,
        "full_images_per_sec": 812.4,
        "full_size_measured": True,
        "checkpoint_s": 0.21,
        "restart_s": 9.7,
        "train_examples": 1438,
        "test_examples": 359,
        "precision": "float32",
        "at_step": 20,
    },
    "predicted_end_s": 41.2,
}
PROBES_FILE = {
    "minutes": 5.0,
    "plan": {**FINAL_FILE["plan"], "epochs": 1, "train_steps": 0, "eval_test_every": 1},
    "measured": {
        "low_res_images_per_sec": 812.4,
        "full_images_per_sec": 812.4,
        "checkpoint_s": 0.21,
        "run_overhead_s": 9.7,
        "train_examples": 1438,
        "test_examples": 359,
        "precision": "float32",
    },
    "seconds_left_at_plan": 280.1,
    "predicted_end_s": 51.3,
}


def test_the_plans_in_results_read_as_records_and_write_back_byte_for_byte(tmp_path):
    # results/time_to_accuracy/<run>_plan.json: the budget.json of each run there, as the code of its
    # day wrote it (zen3_*: the run measured its own steps; the rest: the probes' layout, issue 32).
    paths = sorted((REPO / "results" / "time_to_accuracy").glob("*_plan.json"))
    assert len(paths) >= 9
    for path in paths:
        written, saved = json.loads(path.read_text()), Saved.read(path)
        assert (saved.minutes, saved.stage) == (written["minutes"], written.get("stage", "final"))
        assert saved.plan.flags() == written["plan"] and saved.predicted_end_s == written["predicted_end_s"]
        assert (saved.measured is not None) == ("at_step" in written["measured"]), path.name
        if saved.measured is not None:  # the current layout: written back, the same bytes
            saved.write(tmp_path / path.name)
            assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name
    assert sum((tmp_path / p.name).exists() for p in paths) >= 2  # zen3_30, zen3_60


@pytest.mark.slow
@pytest.mark.parametrize(
    "written, said, steps",
    [
        (FINAL_FILE, "30 steps (0.7 epochs), warmup 3 steps", 30),
        (PROBES_FILE, "1 epochs, warmup 3", 44),
    ],
)
def test_a_budget_json_of_the_earlier_layout_continues(written, said, steps, tmp_path, capsys):
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    (model_dir / "budget.json").write_text(json.dumps(written, indent=1) + "\n")
    kept = (model_dir / "budget.json").read_bytes()
    cfg = TrainConfig.of(**TINY, model_dir=str(model_dir), epochs=10, lr_warmup_steps=40)
    summary = budget.run(cfg, 5.0, started=time.time())
    assert f"continuing the plan in {model_dir / 'budget.json'}: {said}" in capsys.readouterr().out
    assert summary.steps == summary.total_steps == steps
    recorded = json.loads((model_dir / "config.json").read_text())
    assert {k: recorded[k] for k in written["plan"]} == written["plan"]  # the plan, as saved
    assert (model_dir / "budget.json").read_bytes() == kept  # continued, not re-planned


@pytest.mark.slow
def test_a_budget_json_written_while_measuring_measures_again_and_keeps_its_layout(tmp_path, monkeypatch):
    # Interrupted while measuring (for another budget: nothing was planned), as the code wrote it.
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    measuring = {**FINAL_FILE, "stage": "measuring", "minutes": 7.0, "measured": {}}
    del measuring["predicted_end_s"]
    measuring["plan"] = {**measuring["plan"], "epochs": 10, "train_steps": 0, "eval_test_every": 10**9}
    (model_dir / "budget.json").write_text(json.dumps(measuring, indent=1) + "\n")
    monkeypatch.setattr(budget, "MEASURE_STEPS", 20)
    monkeypatch.setattr(budget, "WARMUP_STEPS", 5)
    cfg = TrainConfig.of(**TINY, model_dir=str(model_dir), epochs=10, lr_warmup_steps=0)
    with pytest.raises(ConfigError, match=r"Give at least --time_budget=\d+, or --epochs\."):
        budget.run(cfg, 0.01, started=time.time())
    saved = json.loads((model_dir / "budget.json").read_text())
    # Measured again from its first step, and written back in the same layout, key for key.
    assert list(saved) == ["minutes", "stage", "plan", "measured"] and saved["stage"] == "measuring"
    assert saved["minutes"] == 0.01 and list(saved["plan"]) == list(measuring["plan"])
    assert list(saved["measured"]) == list(FINAL_FILE["measured"])
    assert saved["measured"]["at_step"] == 20 and saved["measured"]["train_examples"] == 1438
    assert saved["measured"]["full_size_measured"] is True  # no --low_res_size: one size
