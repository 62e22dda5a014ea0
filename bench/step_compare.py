"""This project's ResNet-56 and PyTorch's, step by step from identical weights and batches.

Is this code's slow recovery from the lr-0.1 blow-up of ResNet-56 (docs/reproduction.md) a
difference of the code or of the trajectory? Both frameworks start from the same weights (this
project's initialisation, copied) and train on the same un-augmented batches with the paper's SGD
(lr 0.1, momentum 0.9, weight decay 1e-4 on kernels only); PyTorch's net pads stride-2 inputs as
TensorFlow does. Two runs in two interpreters (PyTorch is never this project's dependency):

    .venv/bin/python bench/step_compare.py --npz=runs/cifar10_train.npz --out=runs/step
    <torch-python> bench/step_compare.py --torch --out=runs/step [--threads=1]

(the .npz as in bench/torch_cifar_start.py). The Keras run trains with train.py's own model and
compile (`models.build_model`, `optimization.compile_model`, `train_on_batch`); the PyTorch run
prints the comparison: the first batch's logits, the largest relative difference of the kernels'
first-step gradient norms from PyTorch's float64 ones, then cross-entropy and the kernels' squared
norm per step.

Measured here (2-core AMD EPYC, TensorFlow 2.21 / Keras 3.15, PyTorch 2.13, 40 steps, two Keras
runs): the first batch's logits agree to 2.5e-5 and 6.6e-5 (largest 15.8), the first-step gradient
norms with float64 to 3.4e-4 and 6.6e-4 (PyTorch's own float32: 1.8e-4), the cross-entropy to 1e-4
(relative) for two steps; then the runs part (step 3: 22.78 and 22.85 against 22.90). The same
holds within each framework: the two Keras runs (same weights, same batches; TensorFlow's CPU
kernels are not bitwise reproducible) part at step 2 (26.366 vs 26.368) and by step 12 their
kernels' squared norms are 6,818 and 5,855; PyTorch with 1 thread instead of 2 is bit-identical for
three steps, then parts, and by step 12 is at 7,809 against 14,056. In the blow-up a rounding
difference grows until the runs are unrelated: which run lands where is not a property of either
framework.
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import sys

import numpy as np

LR, MOMENTUM, WEIGHT_DECAY, BATCH = 0.1, 0.9, 1e-4, 128


def keras_side(args) -> None:
    """Writes init.npz (weights in PyTorch's layout), batches.npz and keras.csv."""
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from keras_resnet import runtime

    runtime.start_command()  # first: TensorFlow starts with oneDNN on, and quietly
    import keras
    import tensorflow as tf

    from keras_resnet import models
    from keras_resnet.config import TrainConfig
    from keras_resnet.training import optimization

    keras.utils.set_random_seed(args.seed)
    data = np.load(args.npz)
    images, labels = data["x"].astype(np.float32), data["y"].astype(np.int64)
    images -= images.mean(0)  # the paper's per-pixel mean, as this project's pipeline
    idx = np.random.default_rng(args.seed).integers(0, len(images), (args.steps, BATCH))
    xs, ys = images[idx], labels[idx]
    np.savez(args.out / "batches.npz", x=xs, y=ys)

    # TensorFlow's one-sided padding, as the PyTorch side's tf_padding=True (and as measured).
    model = models.build_model(f"resnet{args.depth}", padding="same")
    optimization.compile_model(model, TrainConfig().optim, 64000)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    fc = model.get_layer("fc")
    kernels = [layer.kernel for layer in convs] + [fc.kernel]
    weights = {f"conv{i}": np.transpose(c.kernel.numpy(), (3, 2, 0, 1)) for i, c in enumerate(convs)}
    weights |= {"fc_w": fc.kernel.numpy().T, "fc_b": fc.bias.numpy(), "eps": bns[0].epsilon}
    np.savez(args.out / "init.npz", **weights)

    logits = keras.Model(model.input, fc.output)
    with tf.GradientTape() as tape:  # plain cross-entropy, as PyTorch's (decay is in its optimizer)
        ce = keras.losses.sparse_categorical_crossentropy(ys[0], logits(xs[0], training=True), True)
        ce = tf.reduce_mean(ce)
    grads = [float(tf.norm(g)) for g in tape.gradient(ce, kernels)]
    np.save(args.out / "keras_logits.npy", logits(xs[0], training=True).numpy())
    for layer in bns:  # that forward pass moved them; training mode never reads them anyway
        layer.moving_mean.assign(np.zeros(layer.moving_mean.shape))
        layer.moving_variance.assign(np.ones(layer.moving_variance.shape))
    rows = []
    for step in range(args.steps):
        penalty = float(sum(model.losses))  # the L2 term train_on_batch adds to the reported loss
        norm = float(sum(float(tf.reduce_sum(k**2)) for k in kernels))
        loss = model.train_on_batch(xs[step], ys[step], return_dict=True)["loss"]
        rows.append({"step": step + 1, "ce": loss - penalty, "kernel_sq_norm": norm})
    _write(args.out / "keras.csv", rows)
    (args.out / "keras_grads.json").write_text(json.dumps(grads))
    print(f"Keras: {args.steps} steps; now run this script with --torch in a PyTorch interpreter")


def torch_side(args) -> None:
    """Trains PyTorch's net from init.npz on batches.npz; prints the comparison."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    from torch_resnet20 import CifarResNet

    torch.set_num_threads(args.threads)
    init, batches = np.load(args.out / "init.npz"), np.load(args.out / "batches.npz")
    xs = torch.from_numpy(np.ascontiguousarray(batches["x"].transpose(0, 1, 4, 2, 3)))
    ys = torch.from_numpy(batches["y"])

    def build(dtype):
        model = CifarResNet((args.depth - 2) // 6, tf_padding=True).to(dtype)
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        with torch.no_grad():
            for i, conv in enumerate(convs):
                conv.weight.copy_(torch.from_numpy(init[f"conv{i}"]))
            model.fc.weight.copy_(torch.from_numpy(init["fc_w"]))
            model.fc.bias.copy_(torch.from_numpy(init["fc_b"]))
        for bn in model.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.eps = float(init["eps"])
        return model, [c.weight for c in convs] + [model.fc.weight]

    first, logits = {}, None
    for dtype in (torch.float64, torch.float32):
        model, kernels = build(dtype)
        out = model(xs[0].to(dtype))
        logits = out.detach().numpy()
        ce = F.cross_entropy(out, ys[0])
        first[dtype] = np.array([float(g.norm()) for g in torch.autograd.grad(ce, kernels)])
    others = [p for p in model.parameters() if p.dim() <= 1]
    groups = [{"params": kernels, "weight_decay": WEIGHT_DECAY}, {"params": others, "weight_decay": 0.0}]
    opt = torch.optim.SGD(groups, lr=LR, momentum=MOMENTUM)
    rows = []
    for step in range(len(xs)):
        norm = float(sum(k.detach().pow(2).sum() for k in kernels))
        loss = F.cross_entropy(model(xs[step]), ys[step])
        opt.zero_grad()
        loss.backward()
        opt.step()
        rows.append({"step": step + 1, "ce": float(loss.detach()), "kernel_sq_norm": norm})
    _write(args.out / f"torch_threads{args.threads}.csv", rows)

    keras_logits = args.out / "keras_logits.npy"
    if keras_logits.exists():
        theirs = np.load(keras_logits)
        print(
            f"first batch's logits (training mode): Keras - PyTorch float32 at most "
            f"{np.abs(theirs - logits).max():.1e}, largest logit {np.abs(logits).max():.1f}"
        )
    exact = first[torch.float64]
    print("first-step gradient norm of each kernel, largest relative difference from PyTorch float64:")
    print(f"  PyTorch float32 {np.abs(first[torch.float32] / exact - 1).max():.1e}")
    keras_grads = args.out / "keras_grads.json"
    if keras_grads.exists():
        keras_first = np.array(json.loads(keras_grads.read_text()))
        print(f"  Keras   float32 {np.abs(keras_first / exact - 1).max():.1e}")
    keras_rows = _read(args.out / "keras.csv")
    print(f"{'step':>4} {'Keras CE':>10} {'PyTorch CE':>10} {'Keras |w|^2':>12} {'PyTorch |w|^2':>13}")
    for k, t in zip(keras_rows, rows, strict=False):
        print(
            f"{t['step']:>4} {k['ce']:>10.4f} {t['ce']:>10.4f} "
            f"{k['kernel_sq_norm']:>12,.0f} {t['kernel_sq_norm']:>13,.0f}"
        )


def _write(path: pathlib.Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _read(path: pathlib.Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--torch", action="store_true", help="the PyTorch run (after the Keras one)")
    parser.add_argument("--npz", help="Keras run: x (N, 32, 32, 3) 0-255 and y (N,) of the training set")
    parser.add_argument("--out", default="runs/step", type=pathlib.Path, help="folder both runs share")
    parser.add_argument("--depth", type=int, default=56)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="PyTorch's threads")
    args = parser.parse_args()
    if args.torch:
        if not (args.out / "init.npz").exists():
            parser.error(f"{args.out}/init.npz is missing: run the Keras side first (without --torch)")
        torch_side(args)
    else:
        if not args.npz:
            parser.error("--npz is required for the Keras run (see the module docstring to write it)")
        args.out.mkdir(parents=True, exist_ok=True)
        keras_side(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
