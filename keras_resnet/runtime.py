"""The process around TensorFlow: how a command starts it, what it logs, which CPU it has.

Standard library only. `start_command` runs in every command of this project once its flags are
read and before TensorFlow is imported, because two things are only decided at that moment
(a library import changes neither; a notebook sets `TF_ENABLE_ONEDNN_OPTS=1` itself):

- oneDNN kernels: TensorFlow enables them by default only on x86 CPUs with AVX-512 VNNI/BF16 or
  AMX; on AVX2-only CPUs they stay off although they still pay (about twice the training speed
  on a Zen 3; results/README.md's Zen3 rows are with them on, its `onednn_off` serving row
  without). `TF_ENABLE_ONEDNN_OPTS=0` in the environment keeps TensorFlow's choice.
- start-up noise: on a machine without a GPU, the import and the first device query print CUDA
  probe messages (`cudart_stub.cc`, `cuInit`), an absl notice and CPU-feature advice to stderr
  from C++, where neither `TF_CPP_MIN_LOG_LEVEL` nor Python logging reaches them. They are
  captured at the file-descriptor level for that moment, and every other line is replayed, so a
  real error still shows.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pathlib
import re
import shlex
import sys
import tempfile
import warnings
from collections.abc import Iterator

# Start-up messages of TensorFlow 2.16-2.21 on CPU-only machines: none is actionable.
NOISE = re.compile(
    r"cudart_stub\.cc|cuda_platform\.cc.*cuInit|cuda_executor\.cc|cuda_diagnostics\.cc"
    r"|All log messages before absl::InitializeLog"
    r"|cpu_feature_guard\.cc|To enable the following instructions:|rebuild TensorFlow with the appropriate"
    r"|oneDNN custom operations are on|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation placer already registered|TF-TRT Warning"
)


@contextlib.contextmanager
def filtered_stderr(noise: re.Pattern = NOISE) -> Iterator[None]:
    """Captures file descriptor 2 inside the block; afterwards writes back the lines that are not `noise`."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (e.g. some notebooks)
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            capture.seek(0)
            kept = [
                line
                for line in capture.read().decode(errors="replace").splitlines()
                if not noise.search(line)
            ]
            if kept:  # the process's own stream, given back: not a line of this package's
                sys.stderr.write("\n".join(kept) + "\n")
                sys.stderr.flush()


def import_tensorflow() -> None:
    """Imports TensorFlow with its start-up noise filtered out (once); changes no environment variable.

    Nothing happens when TensorFlow is already imported or Keras runs on another backend.
    """
    if "tensorflow" in sys.modules or os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        return
    with filtered_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # the CUDA probe prints here, not at import


def start_command(verbosity: int | None = None) -> None:
    """What a command of this project does once its flags are read, before TensorFlow starts.

    oneDNN on (`TF_ENABLE_ONEDNN_OPTS=1` unless the environment says otherwise), TensorFlow's C++
    log at warnings and errors unless `verbosity` (absl's --verbosity, when given) asks for more,
    TensorFlow imported without its start-up noise, and the libraries' Python logs quiet (`quiet`).
    """
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    if verbosity is None or verbosity < 0:
        # TensorFlow reads its C++ log level once, at import.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import_tensorflow()
    quiet(verbosity)


# The CPU flags that claim native bfloat16 arithmetic (a claim only: `training.resolve_precision`
# measures before trusting it).
BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu() -> tuple[str, frozenset[str]]:
    """The CPU's model name and feature flags (Linux' /proc/cpuinfo; ("unknown", {}) elsewhere)."""
    try:
        info = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown", frozenset()
    names = [line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")]
    return (names[0] if names else "unknown"), frozenset(info.split())


def cpu_claims_bfloat16() -> bool:
    """Whether the CPU's flags claim native bfloat16 (AVX512_BF16 or AMX)."""
    return bool(set(BFLOAT16_FLAGS) & cpu()[1])


# The TensorFlow and oneDNN settings the process started with, before `start_command` adds its own.
_STARTED_WITH = {name: value for name, value in os.environ.items() if name.startswith(("TF_", "ONEDNN_"))}


def command_line() -> str:
    """This process's command as typed: its TensorFlow/oneDNN environment settings, `python`, arguments.

    Result files record it, so that each figure names the command that made it.
    """
    settings = [f"{name}={value}" for name, value in sorted(_STARTED_WITH.items())]
    return shlex.join([*settings, "python", *sys.argv])


def cpu_description() -> str:
    """The model name with the features that set ResNet speed here: the machines differ between runs."""
    name, flags = cpu()
    features = [f for f in ("avx512f", *BFLOAT16_FLAGS) if f in flags]
    return f"{name} ({', '.join(features or ['avx2' if 'avx2' in flags else 'no avx2'])})"


def quiet(verbosity: int | None = None) -> None:
    """Library logs for a command-line run: errors only, unless `verbosity` asks for more.

    `verbosity` is absl's `--verbosity` when given on the command line (0 info, 1 debug), None
    otherwise. TensorFlow's Python logger also gets its own stderr handler; absl's handler on the
    root logger prints its records already, so that one goes (each line once).
    """
    # Quiet: the libraries' errors only; this package's own warnings (a skipped corrupt image, a
    # plot that failed) still show.
    level = (
        logging.ERROR
        if verbosity is None or verbosity < 0
        else logging.INFO
        if verbosity == 0
        else logging.DEBUG
    )
    for name in ("tensorflow", "absl", "keras_tuner", "tensorflow_datasets", "h5py"):
        logging.getLogger(name).setLevel(level)
    show_logs(min(level, logging.INFO))
    from absl import logging as absl_logging  # its verbosity flag overrides the logger's level

    absl_logging.set_verbosity(absl_logging.converter.standard_to_absl(level))
    tf_logger = logging.getLogger("tensorflow")
    if any(type(h).__name__ == "ABSLHandler" for h in logging.getLogger().handlers):
        for handler in list(tf_logger.handlers):
            tf_logger.removeHandler(handler)
    if level > logging.WARNING:
        # Deprecation notices of the libraries' own internals: nothing a user can act on.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*__array__ implementation doesn't accept a copy keyword")


class PlainLines(logging.Handler):
    """This package's log as a command shows it: each record's message as a plain line, on the
    stdout of the moment below warnings (a test's captured stdout too), on stderr from them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            warn = record.levelno >= logging.WARNING
            stream = sys.stderr if warn else sys.stdout
            stream.write(("warning: " if warn else "") + self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def show_logs(level: int = logging.INFO) -> None:
    """Shows the `keras_resnet` loggers' records from `level` up as plain lines (`PlainLines`).

    The library only logs (a notebook or a script sees Python's default: warnings); the commands
    call this through `start_command`, so that a run's lines (its header, the budget's plan, the
    result) are on stdout. absl's handler on the root logger would print each record a second
    time, with its own prefix: the package's records stop here.
    """
    package = logging.getLogger("keras_resnet")
    package.setLevel(level)
    package.propagate = False
    if not any(isinstance(h, PlainLines) for h in package.handlers):
        package.addHandler(PlainLines())
