"""PyTorch's inference paths for bench/bench_serving.py: the twin of a Keras net of this package,
called eager, as a frozen TorchScript graph and compiled; channels_last, float32, eval mode,
random weights (speed does not depend on them).

bench_serving.py imports this module only where `import torch` works (the `bench` extra). Run
alone, it is the process holding only the eager twin after one call, and prints its peak RSS:

    .venv/bin/python bench/torch_serving.py --family imagenet --repeats 3,4,6,3 --classes 1000 --size 224
"""

from __future__ import annotations

import argparse
import os
import pathlib
import resource
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch_resnet20 import CifarResNet
from torch_resnet50 import ImageNetResNet

EAGER, FROZEN, COMPILED = "eager", "jit.trace+freeze", "torch.compile"
PATHS = (EAGER, FROZEN, COMPILED)


def start(threads: int = 0) -> None:
    """`threads` (0: every core, as bench_train.py's PyTorch step has them) for PyTorch's intra-op pool."""
    torch.set_num_threads(threads or os.cpu_count() or 1)


def twin(family: str, repeats: tuple[int, ...], num_classes: int) -> nn.Module:
    """The PyTorch net built like the Keras one: a CIFAR net of `repeats[0]` basic blocks per stage
    (option A) or a bottleneck ImageNet net (option B), ending in softmax as the Keras net does."""
    torch.manual_seed(0)
    if family == "cifar":
        net = CifarResNet(repeats[0], num_classes=num_classes)
    else:
        net = ImageNetResNet(repeats, num_classes)
    return nn.Sequential(net, nn.Softmax(dim=1)).eval().to(memory_format=torch.channels_last)


def count_params(model: nn.Module) -> int:
    """Weights, biases and batch-norm scales and offsets: what Keras counts as trainable."""
    return sum(p.numel() for p in model.parameters())


def as_input(views: np.ndarray) -> torch.Tensor:
    """NHWC float32 views as PyTorch's NCHW tensor in channels_last memory (the same bytes, no copy)."""
    x = torch.from_numpy(np.ascontiguousarray(views, np.float32)).permute(0, 3, 1, 2)
    assert x.is_contiguous(memory_format=torch.channels_last)
    return x


def _called(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], np.ndarray]:
    """`fn` as a server would call it: under inference_mode, the probabilities as NumPy."""

    def call(x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return fn(x).numpy()

    return call


def paths(model: nn.Module, example: torch.Tensor) -> dict[str, Callable[[torch.Tensor], np.ndarray]]:
    """The three ways to serve `model`; `example` (any batch) is what the frozen graph is traced on."""
    with torch.inference_mode():
        frozen = torch.jit.freeze(torch.jit.trace(model, example))
    # dynamic=False: one static graph per batch size (compiled during each batch's warm-up), the
    # fastest kernels; four batch sizes stay under dynamo's recompilation limit of eight.
    compiled = torch.compile(model, dynamic=False)
    return {EAGER: _called(model), FROZEN: _called(frozen), COMPILED: _called(compiled)}


def peak_rss_mb() -> float:
    """This process' peak resident set (Linux' VmHWM; else getrusage, KiB on Linux)."""
    try:
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", choices=("cifar", "imagenet"), required=True)
    parser.add_argument("--repeats", required=True, help="blocks per stage, comma list")
    parser.add_argument("--classes", type=int, required=True)
    parser.add_argument("--size", type=int, required=True)
    args = parser.parse_args()
    start()
    model = twin(args.family, tuple(int(n) for n in args.repeats.split(",")), args.classes)
    x = torch.rand(1, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)
    _called(model)(x)
    print(f"{peak_rss_mb():.1f}")


if __name__ == "__main__":
    main()
