"""The paper's bottleneck ResNets in PyTorch (Table 1; ResNet-50: 25,557,032 parameters with 1,000
classes), the twins of `build_model("resnet50")` (and 101, 152) for bench/bench_serving.py.

Built as the Keras nets are by default: option-B shortcuts (a 1x1 projection with batch norm
where the shape changes, identity elsewhere); a stage's stride on its first block's first 1x1
convolution, as the paper's MSRA release, keras.applications.ResNet50 and `build_model`'s
`bottleneck_stride="1x1"` (torchvision's "v1.5" puts it on the 3x3; same parameter count, more
multiply-adds); convolutions without bias (batch norm follows each); every side padded, as the
Keras nets' "symmetric" padding. Written here because torchvision does not install beside the
CPU build of torch 2.13 that the `bench` extra pins.

    .venv/bin/python bench/torch_resnet50.py      # prints the parameter count and output shape
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Table 1: bottleneck blocks per stage, conv2_x .. conv5_x.
REPEATS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
EXPANSION = 4  # a bottleneck block outputs 4x the width of its 3x3 convolution


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
    )


class Bottleneck(nn.Module):
    """1x1 (stride here), 3x3, 1x1 to 4x `width`; projection shortcut where the shape changes."""

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = EXPANSION * width
        self.c1, self.c2 = _conv_bn(cin, width, 1, stride), _conv_bn(width, width, 3)
        self.c3 = _conv_bn(width, cout, 1)
        self.shortcut = _conv_bn(cin, cout, 1, stride) if stride > 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c3(F.relu(self.c2(F.relu(self.c1(x)))))
        return F.relu(y + self.shortcut(x))


class ImageNetResNet(nn.Module):
    """7x7/2 stem, 3x3/2 max pool, four bottleneck stages (64..512 wide), average pool, classifier."""

    def __init__(self, repeats: tuple[int, ...] = REPEATS[50], num_classes: int = 1000):
        super().__init__()
        self.stem = _conv_bn(3, 64, 7, 2)
        blocks, cin = [], 64
        for stage, n in enumerate(repeats):
            width = 64 * 2**stage
            for b in range(n):
                blocks.append(Bottleneck(cin, width, 2 if stage > 0 and b == 0 else 1))
                cin = EXPANSION * width
        self.blocks, self.fc = nn.Sequential(*blocks), nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2, 1)
        x = self.blocks(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def main() -> None:
    model = ImageNetResNet().eval()
    with torch.inference_mode():
        shape = tuple(model(torch.rand(1, 3, 224, 224)).shape)
    print(f"ResNet-50: {sum(p.numel() for p in model.parameters()):,} parameters, output {shape}")


if __name__ == "__main__":
    main()
