"""PyTorch's training speed for the same ResNet-20 (option A, 269,722 parameters), the peer baseline.

Run by `bench/bench_train.py --torch_python=<venv>/bin/python` in that interpreter, interleaved
with the Keras paths; PyTorch is never a dependency of this project. Prints one JSON line:

    <torch-venv>/bin/python bench/torch_resnet20.py --steps 60 --precision float32

The step is the usual PyTorch loop: channels_last, SGD with momentum and weight decay, cross
entropy, on one in-memory batch of random images (no input pipeline), `torch.set_num_threads`
set to the machine's cores; bfloat16 is CPU autocast. Images/s count the steps after the first 5.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    """Basic block with the option-A shortcut (strided identity, zero channels appended).

    `tf_padding`: pad a stride-2 convolution's input one pixel at the bottom and right only, as
    TensorFlow's "same" padding does on even sizes (PyTorch's padding=1 pads every side).
    """

    def __init__(self, cin: int, cout: int, stride: int, tf_padding: bool = False):
        super().__init__()
        self.tf_pad = tf_padding and stride > 1
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 0 if self.tf_pad else 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.stride, self.extra = stride, cout - cin

    def forward(self, x):
        y = self.c1(F.pad(x, (0, 1, 0, 1)) if self.tf_pad else x)
        y = self.b2(self.c2(F.relu(self.b1(y))))
        shortcut = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        if self.extra:  # option A: zero channels appended
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra))
        return F.relu(y + shortcut)


class CifarResNet(nn.Module):
    """Section 4.2's 6n+2-layer net (16/32/64 filters, n blocks per stage); n=3 is ResNet-20."""

    def __init__(self, n: int = 3, tf_padding: bool = False, num_classes: int = 10):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)
        blocks, cin = [], 16
        for i, cout in enumerate((16, 32, 64)):
            for b in range(n):
                blocks.append(Block(cin, cout, 2 if i > 0 and b == 0 else 1, tf_padding))
                cin = cout
        self.blocks, self.fc = nn.Sequential(*blocks), nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--precision", default="float32", choices=("float32", "bfloat16"))
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    model = CifarResNet().to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.rand(args.batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,))
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bfloat16"):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    steady = times[5:]
    params = sum(p.numel() for p in model.parameters())
    print(
        json.dumps(
            {
                "params": params,
                "images_per_sec": args.batch * len(steady) / sum(steady),
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
