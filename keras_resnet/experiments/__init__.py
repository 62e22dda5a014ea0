"""The paper's evidence re-measured by this code (`python -m keras_resnet.reproduce EXPERIMENT`).

- `options`: an experiment's settings and the paper's own numbers (pure Python).
- `plan`: the recipe of section 4.2 scaled to a budget, the runs an experiment makes, time left.
- `locations`: --out, --results and --carry checked before any run (the user's files, clashes).
- `paper`: the experiments (degradation, responses, shortcuts, Table 6).
- `measure`: training error in evaluation mode, the layers' responses.
- `figures`: CSV files, tables and the figures in the paper's layouts.
"""
