"""Hyperparameter searches with keras-tuner, each trial a training run (`train.py --tune`).

- `searching`: `search(cfg, ...)`, the results, the winner scored and exported through training's own steps.
- `tuner`: the hypermodel and the tuner whose trials are `training.run`s.
- `cluster`: keras-tuner's chief/worker mode across machines.
- `space`: `--search` parsed into a space, a trial's values into a `TrainConfig`.
- `report`: a search's results table and figure.
"""

from keras_resnet import _lazy
from keras_resnet.models import register

register()  # a model.keras loads once any stage package is imported

__getattr__, __dir__ = _lazy.exports(
    __name__,
    {
        "search": ".searching",
        "SearchResult": ".searching",
        "default_tune_dir": ".searching",
        "trials_on_disk": ".tuner",
        "make_tuner": ".tuner",
        "ResNetHyperModel": ".tuner",
        "NoTrialCompleted": ".tuner",
        "TUNERS": ".tuner",
        "distributed_role": ".cluster",
        "apply_values": ".space",
        "make_space": ".space",
        "parse_search": ".space",
        "space_size": ".space",
        "trial_rows": ".report",
        "write_results": ".report",
        "markdown_table": ".report",
    },
)
