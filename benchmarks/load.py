"""Load test of the running explorer: concurrent gradio_client clients calling /compress.

    python benchmarks/load.py [--clients 8] [--calls 25] [--total 500] [--size 64]
                              [--scenes primitives[,blocks,...]] [--seed 0] [--json]

Starts ``python app.py`` on a free port and, after one warm-up call (which loads the model):

(b) concurrency: ``--clients`` threads, each with its own ``gradio_client.Client``, make
    ``--calls`` seeded random /compress calls each (bits 1..8, rank up to 128 = full, prune
    0..0.5, a few camera angles, weight formats, keep-ends, error-map reference; some calls
    repeat an earlier one, so identical requests meet in the queue), timing every call;
(c) isolation: every distinct call of (b) is made again alone (one client, sequentially) and
    its result compared with each concurrent result of that call: the readout minus its
    timings (``timing_ms``, ``render_ms``, ...) must be equal, the returned images (original,
    compressed, error map) identical pixel for pixel, and the size line and readout cards
    (render times masked) equal;
(d) memory: more random concurrent calls until ``--total`` calls in all; the app process's
    RSS (``VmRSS`` of /proc/PID/status, children not counted) is read after the first
    ``--rss-first`` calls and after the last; it must not grow past 1.5×. Calls of (d) that
    repeat a call of (c) are compared with its result too.

Targets (the issue): zero errors, every result equal to the same call made alone, p95 latency
reported, RSS after ``--total`` calls ≤ 1.5× RSS after the first 50. The exit status is 1
when any call failed or any result differed (RSS and latency are reported, pass/fail).
The load average is printed: the slider path runs two /compress calls at a time, so the latency
of each call includes the queue behind the other clients.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BITS = list(range(1, 9))
RANKS = [8, 16, 32, 64, 96, 128]  # 128: full, no factorization
PRUNES = [round(0.05 * i, 2) for i in range(11)]  # 0 … 0.5
AZIMUTHS = [-150, -90, -30, 0, 30, 90, 150]
ELEVATIONS = [0, 15, 30, 60]
FORMATS = ["k-means", "fp16", "float32"]
ERROR_VS = ["original NeRF", "ground truth"]
# the outputs of /compress (app.py main_out): pair, error_img, cards, readout, size_line, 2 plots
PAIR, ERROR_IMG, CARDS, READOUT, SIZE_LINE = range(5)
TIME_KEYS = {"timing_ms", "render_ms", "render_ms_original"}
RSS_TARGET = 1.5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid: int) -> int:
    """Resident set size of the process (kB), from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))] if xs else float("nan")


class Calls:
    """Seeded random /compress arguments, in the order of ``ui.compress``: (scene, bits, rank,
    prune, azimuth, elevation, size, keep_ends, float_format, admm_steps, error_vs)."""

    def __init__(self, seed: int, scenes: list[str], sizes: list[int], repeat: float) -> None:
        self.rng, self.scenes, self.sizes, self.repeat = random.Random(seed), scenes, sizes, repeat
        self.history: list[tuple] = []

    def one(self) -> tuple:
        rng = self.rng
        if self.history and rng.random() < self.repeat:
            return rng.choice(self.history)
        call = (
            rng.choice(self.scenes),
            rng.choice(BITS),
            rng.choice(RANKS),
            rng.choice(PRUNES),
            float(rng.choice(AZIMUTHS)),
            float(rng.choice(ELEVATIONS)),
            rng.choice(self.sizes),
            rng.random() < 0.2,
            rng.choices(FORMATS, [8, 1, 1])[0],
            0,  # admm_steps: no refinement is ever requested here
            rng.choice(ERROR_VS),
        )
        self.history.append(call)
        return call

    def many(self, n: int) -> list[tuple]:
        return [self.one() for _ in range(n)]


def pixels(x):
    """Decoded pixel arrays of an image output: a path, a {"path": ...} dict, or a pair."""
    import imageio.v3 as iio

    if x is None:
        return None
    if isinstance(x, (list, tuple)):
        return [pixels(v) for v in x]
    if isinstance(x, dict):
        x = x.get("path") or x.get("url")
    return np.asarray(iio.imread(x))


def summary(out: tuple) -> dict:
    """What must not depend on concurrency: the readout minus timings, the images' pixels, the
    size line and the cards (render times masked)."""
    readout = out[READOUT]
    if not isinstance(readout, dict) or "psnr" not in readout:
        raise TypeError(f"output {READOUT} is not the readout: {str(readout)[:200]}")
    return {
        "readout": {
            k: v
            for k, v in readout.items()
            if k not in TIME_KEYS and not k.endswith(("_ms", "_s")) and "time" not in k
        },
        "pair": pixels(out[PAIR]),
        "error_img": pixels(out[ERROR_IMG]),
        "size_line": out[SIZE_LINE],
        "cards": re.sub(r"[\d.,]+ ms", "# ms", str(out[CARDS])),
    }


def differences(a: dict, b: dict) -> list[str]:
    """Human-readable differences between two summaries (empty: equal)."""
    out = []
    ra, rb = a["readout"], b["readout"]
    for k in sorted(ra.keys() | rb.keys()):
        if ra.get(k, "<missing>") != rb.get(k, "<missing>"):
            out.append(f"readout[{k!r}]: {ra.get(k, '<missing>')!r} vs {rb.get(k, '<missing>')!r}")
    for name in ("pair", "error_img"):
        xa, xb = a[name], b[name]
        xa, xb = (xa, xb) if isinstance(xa, list) else ([xa], [xb])
        if len(xa) != len(xb):
            out.append(f"{name}: {len(xa)} vs {len(xb)} images")
            continue
        for i, (u, v) in enumerate(zip(xa, xb, strict=True)):
            if u is None or v is None or u.shape != v.shape:
                shapes = [getattr(w, "shape", None) for w in (u, v)]
                out.append(f"{name}[{i}]: shape {shapes[0]} vs {shapes[1]}")
            elif not np.array_equal(u, v):
                d = np.abs(u.astype(np.int32) - v.astype(np.int32))
                out.append(
                    f"{name}[{i}]: {int((d > 0).sum())} of {d.size} values differ, max {d.max()}"
                )
    for name in ("size_line", "cards"):
        if a[name] != b[name]:
            out.append(f"{name}: {a[name]!r} vs {b[name]!r}")
    return out


class Runner:
    """Counts every call made against the app and reads its RSS at the chosen counts."""

    def __init__(self, pid: int, rss_at: set[int]) -> None:
        self.pid, self.rss_at = pid, rss_at
        self.lock = threading.Lock()
        self.count = 0
        self.rss: dict[int, int] = {}
        self.errors: list[str] = []

    def call(self, client, args: tuple) -> tuple[float, dict | None]:
        """One /compress call → (wall seconds, summary or None on error)."""
        t = time.perf_counter()
        try:
            out = client.predict(*args, api_name="/compress")
            wall = time.perf_counter() - t
            result = summary(out)
        except Exception as e:  # every failure is counted and reported
            wall, result = time.perf_counter() - t, None
            with self.lock:
                self.errors.append(f"{args}: {type(e).__name__}: {e}")
        with self.lock:
            self.count += 1
            if self.count in self.rss_at:
                self.rss[self.count] = rss_kb(self.pid)
        return wall, result

    def concurrent(self, clients: list, work: list[list[tuple]]) -> list[list]:
        """Each client runs its own list of calls in a thread, all starting together;
        returns per client [(args, wall, summary), ...]."""
        results: list[list] = [[] for _ in clients]
        start = threading.Barrier(len(clients))

        def worker(i: int) -> None:
            start.wait()
            for args in work[i]:
                wall, res = self.call(clients[i], args)
                results[i].append((args, wall, res))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(clients))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        return results


def start_app(port: int, timeout: float) -> subprocess.Popen:
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen(
        [sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=sys.stderr
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            return proc
        except OSError:
            if proc.poll() is not None:
                sys.exit(f"python app.py exited with status {proc.returncode}")
            if time.monotonic() > deadline:
                proc.kill()
                sys.exit(f"python app.py did not answer within {timeout:.0f} s")
            time.sleep(0.1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--calls", type=int, default=25, help="calls per client, phase (b)")
    p.add_argument("--total", type=int, default=500, help="calls in all, for the RSS check")
    p.add_argument("--rss-first", type=int, default=50, help="RSS baseline after this many calls")
    p.add_argument("--scenes", default="primitives", help="comma-separated scene names")
    p.add_argument("--size", default="64", help="preview pixels, comma-separated to mix")
    p.add_argument("--repeat", type=float, default=0.2, help="share of calls that repeat one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start-timeout", type=float, default=120.0)
    p.add_argument("--json", action="store_true", help="also print one JSON object at the end")
    args = p.parse_args()
    from gradio_client import Client

    scenes = [s for s in args.scenes.split(",") if s]
    sizes = [int(s) for s in args.size.split(",") if s]
    calls = Calls(args.seed, scenes, sizes, args.repeat)
    rss_first = min(args.rss_first, args.total)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    t0 = time.perf_counter()
    proc = start_app(port, args.start_timeout)
    runner = Runner(proc.pid, {rss_first, args.total})
    clients: list = []
    try:
        serving = time.perf_counter() - t0
        alone = Client(url, verbose=False)
        # (a) warm-up: loads the model
        warm_args = (scenes[0], 4, 128, 0.0, 30.0, 30.0, sizes[0], False, "k-means", 0, ERROR_VS[0])
        warm, _ = runner.call(alone, warm_args)
        print(f"app serving after {serving:.1f} s; warm-up /compress {warm:.2f} s", flush=True)
        clients = [Client(url, verbose=False) for _ in range(args.clients)]

        # (b) concurrency
        work = [calls.many(args.calls) for _ in clients]
        t = time.perf_counter()
        concurrent = [r for per in runner.concurrent(clients, work) for r in per]
        phase_b_s = time.perf_counter() - t
        walls = [w for _, w, _ in concurrent]
        distinct = list(dict.fromkeys(a for a, _, _ in concurrent))
        print(
            f"(b) {len(concurrent)} concurrent calls ({len(distinct)} distinct) by "
            f"{len(clients)} clients in {phase_b_s:.1f} s",
            flush=True,
        )

        # (c) each distinct call again, alone; compare
        reference: dict[tuple, dict] = {}
        for a in distinct:
            _, res = runner.call(alone, a)
            if res is not None:
                reference[a] = res
        mismatches: list[str] = []
        compared = 0

        def check(a: tuple, res: dict | None, phase: str) -> None:
            nonlocal compared
            if res is None or a not in reference:
                return
            compared += 1
            diff = differences(reference[a], res)
            if diff:
                mismatches.append(f"{phase} {a}: " + "; ".join(diff[:4]))

        for a, _, res in concurrent:
            check(a, res, "concurrent")
        print(
            f"(c) {len(distinct)} calls made alone; {compared} concurrent results compared, "
            f"{len(mismatches)} differ",
            flush=True,
        )
        del concurrent  # (d) keeps only what it needs: the RSS is the app's, not ours

        # (d) more random concurrent calls up to --total
        left = args.total - runner.count
        extra_walls: list[float] = []
        if left > 0:
            n = len(clients)
            more = calls.many(left)
            for a, w, res in (
                r for per in runner.concurrent(clients, [more[i::n] for i in range(n)]) for r in per
            ):
                extra_walls.append(w)
                check(a, res, "later")
        total_calls = runner.count
        if args.total not in runner.rss:  # fewer calls than --total were asked for
            runner.rss[total_calls] = rss_kb(proc.pid)
    finally:
        for c in clients:
            try:
                c.close()
            except Exception:  # closing is best effort
                pass
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    rss0 = runner.rss.get(rss_first)
    rss1 = runner.rss.get(args.total, runner.rss.get(total_calls))
    ratio = rss1 / rss0 if rss0 and rss1 else float("nan")
    p50, p95 = percentile(walls, 0.5), percentile(walls, 0.95)
    load = os.getloadavg()
    ok = {
        "errors": not runner.errors,
        "mismatches": not mismatches,
        "rss": ratio <= RSS_TARGET,
    }
    mark = {True: "PASS", False: "FAIL"}
    print(
        f"\n{total_calls} /compress calls at {','.join(map(str, sizes))} px on "
        f"{','.join(scenes)}; {os.cpu_count()} CPUs, load average "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"
    )
    print(f"errors: {len(runner.errors)} (target 0) {mark[ok['errors']]}")
    for e in runner.errors[:5]:
        print(f"  {e}")
    print(
        f"results differing from the same call made alone: {len(mismatches)} of {compared} "
        f"compared (target 0) {mark[ok['mismatches']]}"
    )
    for m in mismatches[:5]:
        print(f"  {m}")
    print(
        f"concurrent latency ({len(clients)} clients × {args.calls} calls): p50 {p50:.3f} s, "
        f"p95 {p95:.3f} s, max {max(walls, default=float('nan')):.3f} s; "
        f"mean {statistics.mean(walls) if walls else float('nan'):.3f} s"
    )
    if extra_walls:
        print(
            f"later concurrent calls ({len(extra_walls)}): p50 {percentile(extra_walls, 0.5):.3f}"
            f" s, p95 {percentile(extra_walls, 0.95):.3f} s"
        )
    print(
        f"app RSS: {rss0 / 1024:.0f} MiB after {rss_first} calls, {rss1 / 1024:.0f} MiB after "
        f"{total_calls}: ×{ratio:.3f} (target ≤ {RSS_TARGET}) {mark[ok['rss']]}"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "calls": total_calls,
                    "clients": len(clients),
                    "calls_per_client": args.calls,
                    "sizes": sizes,
                    "scenes": scenes,
                    "errors": len(runner.errors),
                    "first_errors": runner.errors[:5],
                    "compared": compared,
                    "mismatches": len(mismatches),
                    "first_mismatches": mismatches[:5],
                    "p50_s": round(p50, 3),
                    "p95_s": round(p95, 3),
                    "rss_first_kb": rss0,
                    "rss_first_at": rss_first,
                    "rss_total_kb": rss1,
                    "rss_ratio": round(ratio, 3),
                    "loadavg": load,
                    "pass": ok,
                }
            )
        )
    sys.exit(0 if ok["errors"] and ok["mismatches"] else 1)


if __name__ == "__main__":
    main()
