"""`python -m keras_resnet resnet50 --shortcut B`: build a network and print its layer table.

Prints trainable parameters and multiply-adds per counted layer (convolutions and the classifier)
and the totals, or with `--list` the available model names.
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m keras_resnet", description=__doc__)
    parser.add_argument("model", nargs="?", help="e.g. resnet20, plain56, resnet50")
    parser.add_argument("--shortcut", choices=["A", "B", "C"], help="default: A for CIFAR, B for ImageNet")
    parser.add_argument("--family", choices=["cifar", "imagenet"])
    parser.add_argument("--num_classes", type=int)
    parser.add_argument(
        "--image_size", "--input_size", type=int, help="square input side (default 32 or 224), as train.py's"
    )
    parser.add_argument("--bottleneck_stride", choices=["1x1", "3x3"], default="1x1")
    parser.add_argument("--list", action="store_true", help="list the model names and exit")
    args = parser.parse_args(argv)

    from keras_resnet import build_model, count, list_models, runtime

    runtime.start_command()

    if args.list or not args.model:
        print("\n".join(list_models()))
        return 0
    try:
        model = build_model(
            args.model,
            shortcut=args.shortcut,
            family=args.family,
            num_classes=args.num_classes,
            input_shape=(args.image_size, args.image_size, 3) if args.image_size else None,
            bottleneck_stride=args.bottleneck_stride,
        )
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    report = count(model)
    print(report.table())
    print(f"\n{model.name}: {report.params:,} trainable parameters, {report.macs / 1e9:.3f} G multiply-adds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
