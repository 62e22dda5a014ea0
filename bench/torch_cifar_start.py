"""The first iterations of the paper's CIFAR-10 recipe in PyTorch, for docs/reproduction.md.

Measured here (2-core AMD EPYC, PyTorch 2.13, seed 0 unless said): the same ResNet-56 (option A,
He-initialised convolutions and classifier as in the reference PyTorch reproduction) on the same
per-pixel-mean-subtracted CIFAR-10 at lr 0.1 blows up as this project's does (mean loss 5.0 and 89%
training error over the first 30 iterations). Training error over iterations 271-300, seeds 0-3:
75.2% (1 thread), 88.8%, 80.7%, 64.5% (`--threads=2`); this project's seeds 0 and 1: 89.0% and 86.5%
over 226-295 and 226-300: when a run recovers is chance. Seed 0, 571-600: 62.2% (63.0% with
`--decay=kernels`, this project's choice). Seed 0 with TensorFlow's padding of the stride-2
convolutions (`--padding=tf`): 79.6% over 271-300; with per-image crops and flips
(`--augment=image`): 74.3% over 211-240. CSVs: results/reproduction/torch_*.csv.

Run it in a Python with PyTorch and NumPy (not the project's venv), on an .npz of the
training set that the project's venv writes:

    .venv/bin/python -c "import numpy as np, tensorflow_datasets as tfds; \
d = tfds.load('cifar10', split='train', batch_size=-1, download=False); \
np.savez('runs/cifar10_train.npz', x=d['image'].numpy(), y=d['label'].numpy())"
    <torch-python> bench/torch_cifar_start.py --npz=runs/cifar10_train.npz --steps=600
"""

from __future__ import annotations

import argparse
import csv
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch_resnet20 import CifarResNet  # the same net as the speed baseline (bench/ is on sys.path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--npz", required=True, help="x (N, 32, 32, 3) 0-255 and y (N,) of the training set")
    parser.add_argument("--depth", type=int, default=56)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--decay", choices=("all", "kernels"), default="all", help="what weight decay applies to"
    )
    parser.add_argument(
        "--padding", choices=("torch", "tf"), default="torch", help="of stride-2 convolutions"
    )
    parser.add_argument("--augment", choices=("batch", "image"), default="batch", help="crop/flip per")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", default="", help="write the 30-iteration windows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    data = np.load(args.npz)
    images, labels = data["x"].astype(np.float32), data["y"].astype(np.int64)
    images -= images.mean(0)  # the paper's per-pixel mean, 0-255 scale like this project
    model = CifarResNet((args.depth - 2) // 6, tf_padding=args.padding == "tf")
    for module in model.modules():  # He init, as the reference PyTorch reproduction (akamaster)
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight)
    if args.decay == "all":  # PyTorch's usual, and the reference reproduction's
        groups = [{"params": list(model.parameters()), "weight_decay": 1e-4}]
    else:  # kernels only, like this project's L2 penalty
        kernels = [p for p in model.parameters() if p.dim() > 1]
        others = [p for p in model.parameters() if p.dim() <= 1]
        groups = [{"params": kernels, "weight_decay": 1e-4}, {"params": others, "weight_decay": 0.0}]
    opt = torch.optim.SGD(groups, lr=args.lr, momentum=0.9)
    rows, losses, errors, start = [], [], [], time.time()
    for step in range(1, args.steps + 1):
        idx = rng.integers(0, len(images), 128)
        batch = np.pad(images[idx], ((0, 0), (4, 4), (4, 4), (0, 0)))
        if args.augment == "batch":  # one crop and one flip for the whole batch
            dy, dx = rng.integers(0, 9, 2)
            batch = batch[:, dy : dy + 32, dx : dx + 32]
            if rng.random() < 0.5:
                batch = batch[:, :, ::-1]
        else:  # a crop and a flip per image, as this project's pipeline
            crops = []
            for image in batch:
                dy, dx = rng.integers(0, 9, 2)
                crop = image[dy : dy + 32, dx : dx + 32]
                crops.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
            batch = np.stack(crops)
        x = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))
        y = torch.from_numpy(labels[idx])
        out = model(x)
        loss = F.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        errors.append((out.argmax(1) != y).float().mean().item())
        if step % 30 == 0:
            # Squared norm of the kernels (convolutions and classifier): the growth that stalls them.
            norm = float(sum(p.detach().pow(2).sum() for p in model.parameters() if p.dim() > 1))
            row = {
                "step": step,
                "loss": round(float(np.mean(losses[-30:])), 4),
                "error": round(float(np.mean(errors[-30:])), 4),
                "kernel_sq_norm": round(norm, 1),
            }
            rows.append(row)
            print(
                f"step {step}: loss {row['loss']:.2f}  training error {100 * row['error']:.1f}%  "
                f"kernels' squared norm {norm:,.0f}  ({time.time() - start:.0f} s)",
                flush=True,
            )
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
