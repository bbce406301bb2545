"""Log benchmark: one instance printing lines, followed by the real ``paas logs --json``.

Each line carries the app's ``time.time()`` at print; the benchmark reads the CLI's output
and notes when each line arrives. Runs, against platforms started for the benchmark:

- flood: the app prints ``--flood`` lines as fast as it can; lines/s arriving at the CLI
  (first to last line) and their delay from print to CLI output (median, p99);
- steady: ``--rate`` lines/s, then ``--fast-rate`` (the target, 20k) lines/s ``--repeat``
  times, for ``--seconds`` each: lines/s arriving and the delay at a steady rate (each run
  reported on its own: on a shared 2-core machine one run's p99 is one moment's luck).

The delay is split at Redis: "->Redis" is from the print to the entry's id (app, its output
file or Docker, agent, Redis), the rest is Redis, controller, CLI and this reader. "CPU
us/ln" is the whole machine's busy time per line during a paced run.

Two platforms run side by side, taking turns: "files", where instances write their output
files and the agent reads them (the default), and "docker", where output goes through
Docker's json-file log (``instance_log_files`` off), the path the files replaced.

The sandbox's per-app rate limit (``log_rate_per_app``, default 1000 lines/s) is raised to
10 million for the run, so this measures the pipeline, not the limit.

    make bench            # or: .venv/bin/python bench/logs.py --flood 200000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
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

from bench.measure import machine_cpu_seconds  # noqa: E402
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


def report(label: str, lines: list[tuple[float, float, float]], expected: int,
           cpu_us: float = float("nan")) -> dict[str, float]:
    if not lines:
        print(f"  {label:16} {0:>8}/{expected:<8} (no line arrived)")
        return {"rate": 0.0, "p99": float("nan"), "median": float("nan"), "cpu": cpu_us}
    delays = [(arrived - printed) * 1000 for arrived, printed, _ in lines]
    # Print -> Redis (Docker and the agent), to the millisecond of the entry id.
    stored = [(at - printed) * 1000 for _, printed, at in lines]
    first, last = min(a for a, _, _ in lines), max(a for a, _, _ in lines)
    rate = (len(lines) - 1) / (last - first) if last > first else float("nan")
    printed = max(p for _, p, _ in lines) - min(p for _, p, _ in lines)
    print(f"  {label:16} {len(lines):>8}/{expected:<8} {rate:>12,.0f} "
          f"{(len(lines) - 1) / printed if printed else float('nan'):>12,.0f} "
          f"{statistics.median(delays):>9.1f} {percentile(delays, 99):>9.1f} "
          f"{max(delays):>9.1f} {statistics.median(stored):>9.1f} "
          f"{percentile(stored, 99):>9.1f} {cpu_us:>9.1f}")
    return {"rate": rate, "p99": percentile(delays, 99), "median": statistics.median(delays),
            "cpu": cpu_us}


class Target:
    """One platform with the log app pushed, and a ``paas logs`` following it."""

    def __init__(self, label: str, sandbox: Sandbox, folder: Path) -> None:
        self.label, self.sandbox = label, sandbox
        pushed = sandbox.paas("push", NAME, "-p", str(folder))
        if pushed.returncode != 0:
            raise SystemExit(pushed.stdout + pushed.stderr)
        self.host = sandbox.app_host(NAME)
        self.follower = Follower(sandbox)
        deadline = time.monotonic() + 30  # until the follower is connected: a line it shows
        while not self.follower.tagged("out") and time.monotonic() < deadline:
            sandbox.router_get(self.host, f"/say/{time.time():.6f}")
            time.sleep(0.5)
        self.runs: list[tuple[str, list, int, float]] = []  # label, lines, sent, CPU us/line

    def paced(self, label: str, tag: str, n: int, rate: int, seconds: float) -> None:
        before = machine_cpu_seconds()
        self.sandbox.router_get(self.host, f"/paced?n={n}&rate={rate}&tag={tag}")
        lines = self.follower.wait(tag, n, seconds + 30)
        # Busy time of the whole machine (its 2 cores) per line printed, in microseconds;
        # the wait's idle tail adds only idle time.
        cpu = (machine_cpu_seconds() - before) * 1e6 / n
        self.runs.append((label, lines, n, cpu))

    def flood(self, n: int) -> None:
        self.sandbox.router_get(self.host, f"/flood?n={n}&tag=flood")
        self.runs.append(("flood", self.follower.wait("flood", n, 120), n, float("nan")))

    def close(self) -> None:
        self.follower.close()


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b and not math.isnan(a / b) else "n/a"



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=100_000,
                        help="lines printed at once, as fast as the app can")
    parser.add_argument("--fast-rate", type=int, default=20_000, help="the target's lines/s")
    parser.add_argument("--rate", type=int, default=5000, help="steady lines/s")
    parser.add_argument("--seconds", type=float, default=5.0, help="steady run length")
    parser.add_argument("--repeat", type=int, default=2, help="runs at --fast-rate")
    parser.add_argument("--no-compare", action="store_true",
                        help="skip the platform whose instances log through Docker")
    parser.add_argument("--dump", help="write every line's (arrived, printed, stored) here, "
                        "as JSON by run")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="paas-bench-logs-"))
    folder = work / "log-app"
    shutil.copytree(FIXTURE, folder)
    steady_n, fast_n = int(args.rate * args.seconds), int(args.fast_rate * args.seconds)
    with contextlib.ExitStack() as stack:
        # Both platforms run for the whole benchmark and take turns, so the machine's
        # moods fall on both alike.
        kinds = [("files", True)] + ([] if args.no_compare else [("docker", False)])
        targets = []
        for label, files in kinds:
            sandbox = stack.enter_context(Sandbox(log_rate_per_app=10_000_000,
                                                  instance_log_files=files))
            target = Target(label, sandbox, folder)
            stack.callback(target.close)
            targets.append(target)
        for target in targets:
            target.paced(f"{args.rate // 1000}k/s", "steady", steady_n, args.rate,
                         args.seconds)
        for run in range(1, args.repeat + 1):
            for target in targets if run % 2 else targets[::-1]:
                target.paced(f"{args.fast_rate // 1000}k/s #{run}", f"fast{run}", fast_n,
                             args.fast_rate, args.seconds)
        for target in targets:
            target.flood(args.flood)
        notes = {t.label: t.follower.notes() for t in targets}
        if args.dump:
            Path(args.dump).write_text(json.dumps(
                {t.label: {label: lines for label, lines, _, _ in t.runs} for t in targets}))
        settings = targets[0].sandbox.settings
    shutil.rmtree(work, ignore_errors=True)

    print()
    print("log benchmark: one instance -> agent -> Redis -> controller -> paas logs --json")
    print("  files: the instance writes its output files, the agent reads them (the default);")
    print("  docker: its output goes through Docker's json-file log (instance_log_files off)")
    print(f"  (per-app rate limit raised to 10,000,000 lines/s for the run; cap "
          f"{settings.log_lines_per_app:,} lines)")
    print(f"  {'run':16} {'lines got/sent':>17} {'lines/s got':>12} {'printed/s':>12} "
          f"{'median ms':>9} {'p99 ms':>9} {'max ms':>9} {'->Redis md':>9} "
          f"{'->Redis 99':>9} {'CPU us/ln':>9}")
    results: dict[str, dict[str, dict[str, float]]] = {}
    for target in targets:
        results[target.label] = {
            label: report(f"{target.label} {label}", lines, sent, cpu)
            for label, lines, sent, cpu in target.runs}
        for note in dict.fromkeys(notes[target.label]):
            print(f"  the pipeline said ({notes[target.label].count(note)}x): {note}")
    files = results["files"]
    fast = [v for k, v in files.items() if k.startswith(f"{args.fast_rate // 1000}k/s")]
    print(f"  targets: >= 20,000 lines/s per app stream (flood: {files['flood']['rate']:,.0f}), "
          f"p99 < 250 ms at {args.fast_rate:,} lines/s "
          f"({', '.join(format(r['p99'], '.0f') for r in fast)} ms)")
    if "docker" in results:
        docker_ = results["docker"]
        pairs = [(docker_[k], v) for k, v in files.items() if k in docker_ and k != "flood"]

        def median_ratio(key: str) -> str:
            found = [d[key] / f[key] for d, f in pairs
                     if f[key] > 0 and not math.isnan(d[key] / f[key])]
            return f"{statistics.median(found):.2f}" if found else "n/a"

        print(f"  docker/files, median over the paced runs: machine CPU per line "
              f"{median_ratio('cpu')}, p99 delay {median_ratio('p99')}; flood lines/s "
              f"files/docker {ratio(files['flood']['rate'], docker_['flood']['rate'])}")


if __name__ == "__main__":
    main()
