"""A search on several machines: keras-tuner's chief/worker mode, by its environment variables.

The process with `KERASTUNER_TUNER_ID=chief` serves the oracle over gRPC and trains nothing
(`serve_oracle`); every other id (`tuner0`, `tuner1`, ...) is a worker that asks it for trials.
All share the search's directory. Standard keras-tuner variables: `KERASTUNER_TUNER_ID`,
`KERASTUNER_ORACLE_IP`, `KERASTUNER_ORACLE_PORT`.
"""

from __future__ import annotations

import logging
import os
import pathlib
import time

from keras_resnet import files
from keras_resnet.config import ConfigError

log = logging.getLogger(__name__)

SEARCH_ENDED = "search_ended.json"  # in the project folder: the chief's oracle stopped handing out trials


CHIEF = "chief"
TUNER_ID, ORACLE_IP, ORACLE_PORT = "KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"


def distributed_role() -> str | None:
    """None on one machine; else this process's keras-tuner id: `chief`, or a worker's (`tuner0`...).

    Raises:
        ConfigError: the variables are set only in part.
    """
    names = (TUNER_ID, ORACLE_IP, ORACLE_PORT)
    given = {n: os.environ.get(n, "") for n in names}
    if not any(given.values()):
        return None
    if missing := [n for n in names if not given[n]]:
        raise ConfigError(
            f"--tune on several machines needs {', '.join(names)}; {', '.join(missing)} "
            "is not set (chief: KERASTUNER_TUNER_ID=chief; workers: tuner0, tuner1, ...)."
        )
    if not given[ORACLE_PORT].isdigit():
        raise ConfigError(f"{ORACLE_PORT}={given[ORACLE_PORT]!r} is not a port number.")
    return given[TUNER_ID]


def chief_address() -> str:
    return f"{os.environ[ORACLE_IP]}:{os.environ[ORACLE_PORT]}"


def wait_for_chief(seconds: float) -> None:
    """Blocks until the chief's oracle answers; one line and ConfigError after `seconds`."""
    import grpc

    address = chief_address()
    channel = grpc.insecure_channel(address)
    try:
        try:
            grpc.channel_ready_future(channel).result(timeout=min(5.0, seconds))
            return
        except grpc.FutureTimeoutError:
            log.info(f"[tune] waiting up to {seconds:.0f} s for the chief's oracle at {address}...")
        try:
            grpc.channel_ready_future(channel).result(timeout=max(seconds - 5.0, 0.1))
        except grpc.FutureTimeoutError:
            raise ConfigError(
                f"cannot reach the chief's oracle at {address} after {seconds:.0f} s: start the chief first "
                f"({TUNER_ID}=chief, same {ORACLE_IP}/{ORACLE_PORT} and --tune flags), or check the address "
                "and the firewall."
            ) from None
    finally:
        channel.close()


def rpc_error() -> type[Exception]:
    import grpc

    return grpc.RpcError


def serve_oracle(oracle, project_dir: str, stop_requested) -> str | None:
    """The chief: serves `oracle` over gRPC until every trial has ended; the reason when
    `stop_requested()` (Ctrl-C, SIGTERM) says to stop first, else None.

    keras-tuner's own loop (`oracle_chief.start_server`) answers one request at a time and
    cannot be stopped by a signal; this one is the same servicer with a few threads, progress
    lines, and Ctrl-C/SIGTERM.
    """
    from concurrent import futures

    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute import oracle_chief

    # grpcio binds with SO_REUSEPORT by default: a second chief on the same port would start
    # too, and the workers' requests would go to either search.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=[("grpc.so_reuseport", 0)])
    servicer = oracle_chief.OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    try:
        bound = server.add_insecure_port(chief_address())
    except RuntimeError:  # grpcio >= 1.60 raises where older versions returned 0
        bound = 0
    if not bound:
        raise ConfigError(
            f"the chief cannot listen on {chief_address()}: is the port in use (another search)? "
            f"Set {ORACLE_PORT} to a free port, on the chief and every worker."
        )
    server.start()
    log.info(f"[tune] chief: serving the oracle at {chief_address()}")
    reported = None
    try:
        while not (servicer.stop_triggered and oracle_chief.exit_chief(oracle)):
            time.sleep(1)
            if why := stop_requested():
                return why
            trials = list(oracle.trials.values())
            counts = (sum(t.status == "COMPLETED" for t in trials), len(oracle.ongoing_trials))
            if counts != reported:
                reported = counts
                log.info(f"[tune] chief: {counts[0]} trial(s) done, {counts[1]} running")
        files.write_json(pathlib.Path(project_dir) / SEARCH_ENDED, {"max_trials": oracle.max_trials})
        return None
    finally:
        server.stop(grace=5)
