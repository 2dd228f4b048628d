"""Slider-change latency of the running explorer, through gradio_client.

    python benchmarks/app_latency.py [--scene primitives] [--changes 50] [--size 100] [--seed 0]

Starts ``python app.py`` on a free port and measures the cold start (process start → the page
answers; → the first /compress done, which loads the model). Then, on the warm app, it replays
a seeded sequence of realistic slider changes — one control moved one or two notches at a time
(bits, rank, prune, camera), so settings are revisited as a user would — each a /compress call
at the preview size. It prints p50/p95 of the wall time per call against the targets
(DESIGN.md: p50 ≤ 0.5 s, p95 ≤ 1 s on 2 CPU cores) and where the time goes: the server's own
breakdown (readout ``timing_ms``: recompression, occupancy grid, rendering, metrics, figures)
and the rest (transport: queue, (de)serialization, PNG files, HTTP). The load average is
printed too: numbers taken on a busy machine are slower than the targets assume.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BITS = list(range(1, 9))
RANKS = [8, 16, 24, 32, 48, 64, 128]  # 128: full, no factorization
PRUNES = [round(0.05 * i, 2) for i in range(11)]  # 0 … 0.5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def changes(n: int, seed: int) -> list[dict]:
    """A seeded walk over the controls from the app's defaults (4 bits, full rank, no pruning,
    azimuth 30°): bits most often, then camera, rank and pruning."""
    rng = random.Random(seed)
    state = {"bits": 4, "rank": 128, "prune": 0.0, "azimuth": 30.0, "elevation": 30.0}
    out = []
    for _ in range(n):
        knob = rng.choices(["bits", "azimuth", "rank", "prune"], [5, 2, 2, 1])[0]
        step = rng.choice([-2, -1, 1, 2])
        if knob == "azimuth":
            state["azimuth"] = (state["azimuth"] + 15 * step + 180) % 360 - 180
        else:
            values = {"bits": BITS, "rank": RANKS, "prune": PRUNES}[knob]
            i = min(max(values.index(state[knob]) + step, 0), len(values) - 1)
            state[knob] = values[i]
        out.append(dict(state))
    return out


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scene", default="primitives")
    p.add_argument("--changes", type=int, default=50)
    p.add_argument("--size", type=int, default=100, help="preview pixels (the app's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="also print one JSON object")
    args = p.parse_args()
    from gradio_client import Client

    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    url = f"http://127.0.0.1:{port}/"
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=sys.stderr
    )
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    sys.exit("python app.py exited")
                time.sleep(0.05)
        serving = time.perf_counter() - t0
        client = Client(url, verbose=False)
        view = {"azimuth": 30.0, "elevation": 30.0, "size": args.size}
        first = client.predict(args.scene, 4, 128, 0.0, **view, api_name="/compress")
        first_call = time.perf_counter() - t0
        print(
            f"cold start: serving after {serving:.2f} s (target ≤ 10 s); first /compress done "
            f"after {first_call:.2f} s (loads the model; server {first[3]['timing_ms']})"
        )
        walls, parts, cpu = [], [], []
        for c in changes(args.changes, args.seed):
            t = time.perf_counter()
            out = client.predict(
                args.scene,
                c["bits"],
                c["rank"],
                c["prune"],
                c["azimuth"],
                c["elevation"],
                args.size,
                api_name="/compress",
            )
            wall = (time.perf_counter() - t) * 1e3
            timing = dict(out[3]["timing_ms"])
            timing["transport"] = wall - timing.pop("server_total")
            cpu.append(timing.pop("server_cpu", 0.0))
            walls.append(wall)
            parts.append(timing)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    p50, p95 = percentile(walls, 0.5), percentile(walls, 0.95)
    load = os.getloadavg()
    print(
        f"{len(walls)} slider changes at {args.size}×{args.size} px, {os.cpu_count()} CPUs, "
        f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"
    )
    print(
        f"per /compress call: p50 {p50 / 1e3:.3f} s (target ≤ 0.5), p95 {p95 / 1e3:.3f} s "
        f"(target ≤ 1.0), max {max(walls) / 1e3:.3f} s"
    )
    keys = ["compress", "grid", "render", "metrics", "figures", "transport"]
    names = {"compress": "recompression", "grid": "occupancy grid", "render": "rendering"}
    print(f"{'where the time goes':<22}{'mean ms':>9}{'p50 ms':>9}{'p95 ms':>9}{'share':>8}")
    total = sum(walls)
    for k in keys:
        xs = [t.get(k, 0.0) for t in parts]
        print(
            f"{names.get(k, k):<22}{statistics.mean(xs):>9.0f}{percentile(xs, 0.5):>9.0f}"
            f"{percentile(xs, 0.95):>9.0f}{100 * sum(xs) / total:>7.0f}%"
        )
    print(
        f"server CPU time per call (all threads): p50 {percentile(cpu, 0.5):.0f} ms, mean "
        f"{statistics.mean(cpu):.0f} ms; on 2 idle cores the server part takes about half that"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "changes": len(walls),
                    "size": args.size,
                    "p50_s": round(p50 / 1e3, 3),
                    "p95_s": round(p95 / 1e3, 3),
                    "cold_serving_s": round(serving, 2),
                    "cold_first_compress_s": round(first_call, 2),
                    "loadavg": load,
                    "mean_ms": {
                        k: round(statistics.mean(t.get(k, 0) for t in parts), 1) for k in keys
                    },
                }
            )
        )


if __name__ == "__main__":
    main()
