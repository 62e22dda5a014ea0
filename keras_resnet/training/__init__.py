"""Training: one run of a `TrainConfig`, the same path whoever starts it.

- `procedure`: `run(cfg)` and its steps (`Run`), the evaluation and export every caller shares.
- `steps`: the data, the network and the resume step that the run, the search and the budget share.
- `callbacks`, `progress`, `checkpoints`: what happens between and around the steps.
- `optimization`: loss, error metric, learning-rate schedule, SGD from a run's `OptimConfig`.
- `distribution`, `precision`, `signals`: tf.distribute, float32/bfloat16, Ctrl-C and SIGTERM.
- `budget`: `--time_budget`, the run's length fitted to this machine's measured speed.
- `budgetrecord`: the budget's plan and measurements, and `budget.json` that holds them.
"""

from keras_resnet import _lazy
from keras_resnet.models import register

register()  # a model.keras loads once any stage package is imported

__getattr__, __dir__ = _lazy.exports(
    __name__,
    {
        "run": ".procedure",
        "Run": ".procedure",
        "TrainingStopped": ".procedure",
        "load_data": ".steps",
        "build_model": ".steps",
        "evaluate_model": ".evaluation",
        "export_model": ".evaluation",
        "resumes_at": ".steps",
        "RunDir": "keras_resnet.rundir",
        "Summary": "keras_resnet.rundir",
        "STOP": ".signals",
        "precision_policy": ".precision",
        "resolve_precision": ".precision",
        "strategy_for": ".distribution",
    },
)
