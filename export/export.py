"""Exports a training run as a TF Serving SavedModel version.

    python export/export.py --model_dir runs/resnet20 --export_base /models/resnet20
    python export/export.py --model resnet20 --weights cifar10 --export_base /models/resnet20

writes `/models/resnet20/<next free version>/` atomically (see export/README.md for serving it); the
second exports a net this package ships.
`train.py --export_dir` runs the same code at the end of training.
"""

from __future__ import annotations

import sys

from absl import app, flags

from keras_resnet.config import MAX_PIXELS, TTA

flags.DEFINE_string("model_dir", None, "Training run directory holding model.keras and data_info.json.")
flags.DEFINE_string("model", None, "Instead of --model_dir: a net this package ships (with --weights).")
flags.DEFINE_enum("weights", None, ["cifar10"], "With --model: the shipped weights to export.")
flags.DEFINE_string(
    "export_base", None, "TF Serving base path of the model; versions are its subdirectories."
)
flags.DEFINE_integer("version", None, "Version to write (positive integer); default: the next free one.")
flags.DEFINE_integer("top_k", 5, "Number of labels in the `classes` and `class_names` outputs.")
flags.DEFINE_integer(
    "max_pixels",
    MAX_PIXELS,
    "Encoded images declaring more pixels (height x width) are refused before decoding.",
)
flags.DEFINE_enum(
    "tta",
    None,
    list(TTA),
    "Test-time augmentation inside the SavedModel (the mean over the views); default: the run's own.",
)
flags.mark_flags_as_required(["export_base"])
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if (FLAGS.model_dir is None) == (FLAGS.model is None) or (FLAGS.model is None) != (FLAGS.weights is None):
        raise app.UsageError("Give --model_dir=RUN, or --model=NAME with --weights=cifar10 (a shipped net).")
    from keras_resnet.interrupts import run_command

    # Ctrl-C or SIGTERM: one line, 130/143; the version being built is removed (`files.staging_dir`).
    run_command("export.py", _export)


def _export() -> int:
    """Writes the next version (of a run, or of a shipped net); a missing run, an unwritable base, a
    version taken or a full disk is one line on stderr and exit status 1."""
    from keras_resnet import files, runtime
    from keras_resnet.interrupts import ExitCode

    runtime.start_command(FLAGS.verbosity if FLAGS["verbosity"].present else None)  # no save chatter
    from keras_resnet.serving import exporting

    try:
        options = dict(version=FLAGS.version, top_k=FLAGS.top_k, max_pixels=FLAGS.max_pixels, tta=FLAGS.tta)
        if FLAGS.model_dir is not None:
            path = exporting.export_run(FLAGS.model_dir, FLAGS.export_base, **options)
        else:
            path = exporting.export_shipped(FLAGS.model, FLAGS.export_base, weights=FLAGS.weights, **options)
    except Exception as err:
        full = files.disk_full(err)
        if not (full or isinstance(err, (OSError, ValueError, files.Locked))):
            raise
        print(f"export.py: error: {files.no_space(FLAGS.export_base) if full else err}", file=sys.stderr)
        return ExitCode.ERROR
    base, name = path.parent.resolve(), path.parent.resolve().name
    print(f"Exported {path}")
    print(f"  signatures: {', '.join(exporting.SIGNATURES)} (inputs and outputs: export/README.md)")
    print(f"  serve it:   docker run --rm -p 8500:8500 -p 8501:8501 -v {base}:/models/{name} \\")
    print(f"                -e MODEL_NAME={name} tensorflow/serving")
    return ExitCode.OK


def _help() -> str:
    return __doc__ + "\n" + (FLAGS.get_help() if "--helpfull" in sys.argv else FLAGS.main_module_help())


if __name__ == "__main__":
    from keras_resnet.interrupts import run_absl_command

    run_absl_command(main, _help)
