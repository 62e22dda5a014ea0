"""How bench_serving.py times its paths and reports them: interleaved rounds, pooled percentiles,
the peak memory of a process, the table it prints.

A `Path` is one way to serve the net (`call(x)` on distinct batches, cycled). `run_rounds` times
every path at every batch, the frameworks taking turns at each batch (A B A B) so that a shared
machine's drift falls on all of them; `rows` pools each path's calls over the rounds.
"""

from __future__ import annotations

import dataclasses
import math
import resource
import subprocess
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from keras_resnet.serving import signatures


@dataclasses.dataclass
class Path:
    """One way to serve the net: `call(x)` on each of `inputs[batch]` (distinct batches, cycled)."""

    framework: str
    name: str
    call: Callable[[Any], Any]
    inputs: dict[int, list]


def calls_at(batch: int, calls_batch1: int, calls_batch64: int) -> int:
    """Timed calls at `batch`: log-linear in the batch through (1, calls_batch1), (64, calls_batch64)."""
    return max(1, round(calls_batch1 * (calls_batch64 / calls_batch1) ** (math.log(batch) / math.log(64))))


def batches_of(items, batch: int) -> list:
    """Consecutive distinct batches of `items` (at least one), to cycle through."""
    return [items[i : i + batch] for i in range(0, max(1, len(items) - batch + 1), batch)]


def _time_path(path: Path, batch: int, calls: int, warmup_calls: int) -> list[float]:
    """Seconds of each of `calls` timed calls at `batch`, after `warmup_calls` untimed ones."""
    xs = path.inputs[batch]
    for i in range(warmup_calls):
        path.call(xs[i % len(xs)])
    times = []
    for i in range(calls):
        x = xs[i % len(xs)]
        start = time.perf_counter()
        path.call(x)
        times.append(time.perf_counter() - start)
    return times


def run_rounds(
    paths: list[Path], batches, rounds: int, calls: tuple[int, int], warmup_calls: int
) -> dict[tuple[str, str, int], list[list[float]]]:
    """Every path at every batch, `rounds` times over; the frameworks take turns at each batch.
    `calls`: the timed calls at batch 1 and at 64 over all rounds (`calls_at`)."""
    times = {(p.framework, p.name, b): [] for b in batches for p in paths}
    total, done, start = rounds * len(times), 0, time.perf_counter()
    for r in range(rounds):
        for b in batches:
            calls_b = -(-calls_at(b, *calls) // rounds)
            for p in paths:
                eta = (time.perf_counter() - start) / done * (total - done) if done else float("nan")
                print(
                    f"[{done + 1}/{total}, ETA {eta:.0f} s] round {r + 1}: {p.framework} {p.name} "
                    f"x{b} ({calls_b} calls)...",
                    flush=True,
                )
                times[(p.framework, p.name, b)].append(_time_path(p, b, calls_b, warmup_calls))
                done += 1
    return times


def rows(times: dict[tuple[str, str, int], list[list[float]]]) -> list[dict]:
    rows = []
    for (framework, path, batch), per_round in times.items():
        t = np.concatenate(per_round)
        rows.append(
            {
                "framework": framework,
                "path": path,
                "batch": batch,
                "p50_ms": float(np.percentile(t, 50) * 1e3),
                "p99_ms": float(np.percentile(t, 99) * 1e3),
                "images_per_s": float(batch * len(t) / t.sum()),
                "calls": len(t),
                "rounds_images_per_s": [round(batch * len(r) / sum(r), 1) for r in per_round],
            }
        )
    reference = {
        r["batch"]: r["images_per_s"] for r in rows if r["path"] == signatures.PIXELS_UINT8_SIGNATURE
    }
    for r in rows:
        r["vs_export_pixels"] = r["images_per_s"] / reference[r["batch"]]
    return rows


def peak_rss_mb(cmd: list[str]) -> float:
    """The peak RSS (MB) that `cmd`, a Python process printing its own, reports on its last line."""
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=1800).stdout
    return round(float(out.strip().splitlines()[-1]), 1)


def own_peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def print_table(result: dict) -> None:
    load = result["load_average_at_end"]
    print(
        f"\n{result['model']}, {result['recipe']} recipe, {result['image_size']}x{result['image_size']}; "
        f"{result['cpu']}, {result['cpus']} CPUs, load average {load:.2f} at the end"
    )
    params = ", ".join(f"{k} {v:,}" for k, v in result["params"].items())
    print(f"parameters: {params}; {result['rounds']} interleaved rounds, calls pooled")
    memory = f"peak RSS: a process holding only the export {result['export_peak_rss_mb']:.0f} MB"
    if result["torch_peak_rss_mb"] is not None:
        memory += f", only the eager PyTorch net {result['torch_peak_rss_mb']:.0f} MB"
    print(memory)
    print("x export: images/s relative to predict_pixels_uint8 at the same batch")
    header = ("framework", "path", "batch", "p50 ms", "p99 ms", "img/s", "x export")
    print("{:<10} {:<20} {:>5} {:>8} {:>8} {:>8} {:>8}  runs".format(*header))
    for r in result["rows"]:
        rounds = ", ".join(f"{v:.0f}" for v in r["rounds_images_per_s"])
        print(
            f"{r['framework']:<10} {r['path']:<20} {r['batch']:>5} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
            f"{r['images_per_s']:>8.1f} {r['vs_export_pixels']:>8.2f}  {rounds}"
        )
