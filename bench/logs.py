"""Log benchmark: one instance printing lines, followed by the real ``paas logs --json``.

Each line carries the app's ``time.time()`` at print; the benchmark reads the CLI's output
and notes when each line arrives. Two runs, against a platform started for the benchmark:

- flood: the app prints ``--flood`` lines as fast as it can; lines/s arriving at the CLI
  (first to last line) and their delay from print to CLI output (median, p99);
- steady: ``--rate`` lines/s, then ``--fast-rate`` (the target, 20k) lines/s ``--repeat``
  times, for ``--seconds`` each: lines/s arriving and the delay at a steady rate (each run
  reported on its own: on a shared 2-core machine one run's p99 is one moment's luck).

The delay is split at Redis: "->Redis" is from the print to the entry's id (app, Docker,
agent, Redis), the rest is Redis, controller, CLI and this reader.

The sandbox's per-app rate limit (``log_rate_per_app``, default 1000 lines/s) is raised to
10 million for the run, so this measures the pipeline, not the limit.

    make bench            # or: .venv/bin/python bench/logs.py --flood 200000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from launcher.sandbox import Sandbox, paas_command  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "log-app"
NAME = "logbench"


class Follower:
    """``paas logs NAME --json --source APP``, its output timed as it arrives.

    The output is read in large pieces and each piece timed as a whole (so timing the lines
    costs this process little CPU, which the pipeline under test needs); it is split into
    lines when asked."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.proc = subprocess.Popen(
            [paas_command(), "logs", NAME, "--json", "--source", "APP"],
            env=sandbox.cli_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.chunks: list[tuple[float, bytes]] = []
        self.lines: list[tuple[float, bytes]] = []  # split from chunks[:self.split]
        self.split, self.rest = 0, b""
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        fd, out = self.proc.stdout.fileno(), self.chunks
        while chunk := os.read(fd, 1 << 20):
            out.append((time.time(), chunk))

    def arrived(self) -> list[tuple[float, bytes]]:
        """(arrived, raw line) of every whole line so far."""
        chunks = self.chunks[self.split:]
        self.split += len(chunks)
        for at, chunk in chunks:
            *whole, self.rest = (self.rest + chunk).split(b"\n")
            self.lines.extend((at, raw) for raw in whole if raw.strip())
        return self.lines

    def tagged(self, tag: str) -> list[tuple[float, float, float]]:
        """(arrived, printed, stored) of every line with ``tag``: stored is when Redis took
        it (its entry id's milliseconds)."""
        found, word = [], f"{tag} ".encode()
        for arrived, raw in self.arrived():
            if word not in raw:
                continue
            obj = json.loads(raw)
            text = obj["text"]
            if text.startswith(tag + " "):
                stored = int(obj["id"].split("-")[0]) / 1000
                found.append((arrived, float(text.rsplit(" ", 1)[1]), stored))
        return found

    def notes(self) -> list[str]:
        """The pipeline's own lines about lines it lost (skipped past the cap, rotated
        away by Docker, dropped by the rate limit)."""
        words = (b"lines were skipped", b"may have been lost", b"lines dropped")
        return [json.loads(raw)["text"] for _, raw in self.arrived()
                if any(w in raw for w in words)]

    def wait(self, tag: str, count: int, timeout: float) -> list[tuple[float, float, float]]:
        deadline, seen, still = time.monotonic() + timeout, -1, 0
        last = f'"{tag} {count - 1} '.encode()
        while time.monotonic() < deadline:
            now = len(self.chunks)
            still = still + 1 if now == seen else 0
            seen = now
            if still >= 4 and self.tagged(tag):  # 2 s without a new line: all are in
                break
            if now and last in self.chunks[-1][1]:
                break
            time.sleep(0.5)
        return self.tagged(tag)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.thread.join(5)
        self.proc.stdout.close()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def report(label: str, lines: list[tuple[float, float, float]],
           expected: int) -> dict[str, float]:
    if not lines:
        print(f"  {label:9} {0:>8}/{expected:<8} (no line arrived)")
        return {"rate": 0.0, "p99": float("nan")}
    delays = [(arrived - printed) * 1000 for arrived, printed, _ in lines]
    # Print -> Redis (Docker and the agent), to the millisecond of the entry id.
    stored = [(at - printed) * 1000 for _, printed, at in lines]
    first, last = min(a for a, _, _ in lines), max(a for a, _, _ in lines)
    rate = (len(lines) - 1) / (last - first) if last > first else float("nan")
    printed = max(p for _, p, _ in lines) - min(p for _, p, _ in lines)
    print(f"  {label:9} {len(lines):>8}/{expected:<8} {rate:>12,.0f} "
          f"{(len(lines) - 1) / printed if printed else float('nan'):>12,.0f} "
          f"{statistics.median(delays):>9.1f} {percentile(delays, 99):>9.1f} "
          f"{max(delays):>9.1f} {statistics.median(stored):>9.1f} "
          f"{percentile(stored, 99):>9.1f}")
    return {"rate": rate, "p99": percentile(delays, 99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=100_000,
                        help="lines printed at once (Docker's json-file log of an instance, "
                        "2 x 10 MB, holds about 100k of them while the follower catches up)")
    parser.add_argument("--fast-rate", type=int, default=20_000, help="the target's lines/s")
    parser.add_argument("--rate", type=int, default=5000, help="steady lines/s")
    parser.add_argument("--seconds", type=float, default=5.0, help="steady run length")
    parser.add_argument("--repeat", type=int, default=2, help="runs at --fast-rate")
    parser.add_argument("--dump", help="write every line's (arrived, printed, stored) here, "
                        "as JSON by run")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="paas-bench-logs-"))
    folder = work / "log-app"
    shutil.copytree(FIXTURE, folder)
    with Sandbox(log_rate_per_app=10_000_000) as sandbox:
        pushed = sandbox.paas("push", NAME, "-p", str(folder))
        if pushed.returncode != 0:
            raise SystemExit(pushed.stdout + pushed.stderr)
        host = sandbox.app_host(NAME)
        follower = Follower(sandbox)
        try:
            # Until the follower is connected: a line it shows.
            deadline = time.monotonic() + 30
            while not follower.tagged("out") and time.monotonic() < deadline:
                sandbox.router_get(host, f"/say/{time.time():.6f}")
                time.sleep(0.5)
            steady_n = int(args.rate * args.seconds)
            sandbox.router_get(host, f"/paced?n={steady_n}&rate={args.rate}&tag=steady")
            steady = follower.wait("steady", steady_n, args.seconds + 30)
            fast_n = int(args.fast_rate * args.seconds)
            fast = []
            for run in range(1, args.repeat + 1):
                tag = f"fast{run}"
                sandbox.router_get(host, f"/paced?n={fast_n}&rate={args.fast_rate}&tag={tag}")
                fast.append(follower.wait(tag, fast_n, args.seconds + 30))
            sandbox.router_get(host, f"/flood?n={args.flood}&tag=flood")
            flood = follower.wait("flood", args.flood, 120)
            notes = follower.notes()
            if args.dump:
                Path(args.dump).write_text(json.dumps(
                    {"steady": steady, "fast": fast, "flood": flood}))
        finally:
            follower.close()
    shutil.rmtree(work, ignore_errors=True)

    print()
    print("log benchmark: one instance -> agent -> Redis -> controller -> paas logs --json")
    print(f"  (per-app rate limit raised to 10,000,000 lines/s for the run; cap "
          f"{sandbox.settings.log_lines_per_app:,} lines)")
    print(f"  {'run':9} {'lines got/sent':>17} {'lines/s got':>12} {'printed/s':>12} "
          f"{'median ms':>9} {'p99 ms':>9} {'max ms':>9} {'->Redis md':>9} {'->Redis 99':>9}")
    report(f"{args.rate // 1000}k/s", steady, steady_n)
    p99s = [report(f"{args.fast_rate // 1000}k/s #{run}", lines, fast_n)["p99"]
            for run, lines in enumerate(fast, 1)]
    got = report("flood", flood, args.flood)
    for note in dict.fromkeys(notes):
        print(f"  the pipeline said ({notes.count(note)}x): {note}")
    print(f"  targets: >= 20,000 lines/s per app stream (flood: {got['rate']:,.0f}), "
          f"p99 < 250 ms at {args.fast_rate:,} lines/s "
          f"({', '.join(f'{p:.0f}' for p in p99s)} ms)")


if __name__ == "__main__":
    main()
