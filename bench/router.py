"""Router benchmark: requests/s and latency through the platform router, beside bare nginx.

One fast static backend (its own nginx answering ``return 200 "ok\\n"`` on one port per app,
so the backend is never the bottleneck) and ``wrk --latency`` on loopback against, in the
same run:

- (a) direct: the backend itself, on the port of the app wrk asks for;
- (b) bare proxy: a hand-written minimal nginx proxy (upstream with keep-alive, HTTP/1.1,
  ``Connection ""``, nginx's default access log) with as many workers as the router's config;
- (c) router: the real router (``python -m router``) with a private Redis, 100 apps routed
  to the backend, wrk asking for one of them by Host header;
- (d) churn: (c) again while the route table changes every second (an app mapped, then
  unmapped), so the router reloads nginx under load; every request must get a 2xx. Beside
  it, the same on (b) with a plain ``nginx -s reload`` every second: what nginx itself does.

Runs are interleaved (a, b, c, a, b, c, ...): the machine is shared and noisy, so each
run's (c) is compared with the (b) just before it, and the median of those ratios taken.
Beside requests/s, the CPU the whole machine spends per request (``/proc/stat``) is
printed: on loopback the kernel's TCP work is counted to whichever process it interrupts,
so only the whole machine's time compares two proxies' cost (the proxy's own workers' CPU
is shown too).

wrk runs one thread with 50 connections (``-t1 -c50``): on 2 cores the proxy's workers and
the backend's worker need the rest, so a second wrk thread would only take CPU from what
it measures; 50 keep-alive connections keep one thread and the proxy busy. wrk does not
retry a request whose keep-alive connection was closed under it (a browser would retry an
idempotent one), so (d) counts every such request as failed.

    make bench            # or: .venv/bin/python bench/router.py --runs 9 --seconds 5
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.measure import TICKS, machine_cpu_seconds  # noqa: E402
from contracts import keys  # noqa: E402
from contracts.messages import Backend  # noqa: E402
from contracts.routing import MappedRoute, RouteTable, write_route_table  # noqa: E402
from launcher.sandbox import free_ports  # noqa: E402
from router.nginx import child_pids  # noqa: E402

APPS = 100
TARGET = 50  # the app wrk asks for: app-050.localhost
DOMAIN = "localhost"
AGENT = "bench-agent"
THREADS, CONNECTIONS = 1, 50
READY_TIMEOUT = 20.0

# wrk scripts: the Host header; for the churn run also a count of every status seen.
HOST_LUA = 'wrk.headers["Host"] = "{host}"\n'
COUNT_LUA = HOST_LUA + """
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {{}} end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      io.write(string.format("status %d %d\\n", status, n))
    end
  end
end
"""

BACKEND_CONF = """daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    {temp}
    server {{
        {listen}
        location / {{ default_type text/plain; return 200 "ok\\n"; }}
    }}
}}
"""

# The minimal proxy a person would write by hand for one app. Its idle upstream connections
# (keepalive, per worker) are at least wrk's connections, so it never reconnects to the
# backend while the run lasts: the best a proxy can do here. It logs each request as nginx
# does unless told otherwise (its default access log: a file, combined format, unbuffered),
# as the router does too (its RTR lines come from a buffered access log).
PROXY_CONF = """daemon off;
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {dir}/access.log combined;
    {temp}
    upstream backend {{
        server 127.0.0.1:{backend};
        keepalive {keepalive};
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
TEMP_PATHS = " ".join(f"{kind}_temp_path {{dir}}/{kind}_temp;"
                      for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))


class BenchError(Exception):
    """Something the benchmark needs did not work; the message says what."""


# -- tools ---------------------------------------------------------------------------------

def ensure_wrk() -> str:
    """wrk's path; installs Debian's package when running as root on Debian."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and Path("/etc/debian_version").exists():
        print("wrk is missing; installing Debian's wrk package", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "wrk"]
        if subprocess.run(install, env=env, check=False).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, check=False)
            subprocess.run(install, env=env, check=False)
        found = shutil.which("wrk")
        if found:
            return found
    raise SystemExit("the router benchmark needs wrk: install it with `sudo apt-get install "
                     "wrk` (Debian, Ubuntu) or build it from https://github.com/wg/wrk")


def need(binary: str, package: str) -> str:
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/local/sbin:/sbin")
    if found is None:
        raise SystemExit(f"the router benchmark needs {binary}: install it with "
                         f"`sudo apt-get install {package}` (or run `make setup`)")
    return found


def get(port: int, host: str) -> tuple[int, str]:
    """Status and ``X-Paas-Router-Error`` of ``GET /`` with ``host`` (0 if nothing answers)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/", headers={"Host": host})
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("X-Paas-Router-Error", "")
    except OSError:
        return 0, ""
    finally:
        conn.close()


def wait_port(port: int, proc: subprocess.Popen, what: str, log: Path,
              timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with status {proc.returncode}: {tail(log)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:g} s")


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no output)"
    return "\n".join(text[-lines:]) or "(no output)"


# -- wrk -----------------------------------------------------------------------------------

@dataclass
class Result:
    rps: float
    p50: float  # ms
    p99: float  # ms
    requests: int
    non_2xx: int  # wrk counts statuses above 399 ("Non-2xx or 3xx responses")
    socket_errors: dict[str, int]
    statuses: dict[int, int]
    proxy_us: float = 0.0  # CPU of the proxy's nginx workers per request, microseconds
    router_us: float = 0.0  # CPU of the router's own process (mostly access lines) per request
    machine_us: float = 0.0  # CPU of every process on the machine per request

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values())


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if m is None:
        raise BenchError(f"cannot read wrk's latency {text!r}")
    return float(m[1]) * _UNITS[m[2]]


def parse_wrk(out: str) -> Result:
    try:
        rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out)[1])
        p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M)[1])
        p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M)[1])
        requests = int(re.search(r"(\d+) requests in", out)[1])
    except TypeError:  # a search found nothing
        raise BenchError(f"cannot read wrk's output:\n{out}") from None
    non = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = dict(zip(("connect", "read", "write", "timeout"),
                      map(int, sock.groups()) if sock else (0, 0, 0, 0), strict=True))
    statuses = {int(s): int(n) for s, n in re.findall(r"^status (\d+) (\d+)$", out, re.M)}
    return Result(rps, p50, p99, requests, int(non[1]) if non else 0, errors, statuses)


class Wrk:
    def __init__(self, binary: str, work: Path, host: str) -> None:
        self.binary = binary
        self.plain = work / "host.lua"
        self.plain.write_text(HOST_LUA.format(host=host))
        self.counting = work / "count.lua"
        self.counting.write_text(COUNT_LUA.format(host=host))

    def run(self, port: int, seconds: float, *, count: bool = False) -> Result:
        script = self.counting if count else self.plain
        cmd = [self.binary, f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "--latency",
               "-s", str(script), f"http://127.0.0.1:{port}/"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30,
                              check=False)
        if done.returncode != 0:
            raise BenchError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
        return parse_wrk(done.stdout)


# -- the processes under test --------------------------------------------------------------

class Processes:
    """Every process the benchmark starts, stopped (by pid) in reverse order on close."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None,
              ) -> tuple[subprocess.Popen, Path]:
        log = self.work / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.procs.append((name, proc))
        return proc, log

    def nginx(self, name: str, binary: str, template: str, port: int,
              **values: object) -> subprocess.Popen:
        """nginx in the foreground (the process is its master), listening on ``port``, with
        the config ``template`` filled in, in a folder of its own."""
        folder = self.work / name
        folder.mkdir()
        path = folder / "nginx.conf"
        path.write_text(template.format(dir=folder, temp=TEMP_PATHS.format(dir=folder),
                                        port=port, **values))
        proc, _log = self.start(name, [binary, "-c", str(path), "-p", f"{folder}/",
                                      "-e", str(folder / "error.log")])
        wait_port(port, proc, f"nginx ({name})", folder / "error.log")
        return proc

    def close(self) -> None:
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _name, proc in reversed(self.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: nginx and workers
                proc.wait()


def host_of(n: int) -> str:
    return f"app-{n:03d}.{DOMAIN}"


def mapped(n: int) -> MappedRoute:
    return MappedRoute(guid=f"bench-route-{n:03d}", host=host_of(n), domain=DOMAIN,
                       app_guid=f"bench-app-{n:03d}", app_name=f"app-{n:03d}")


def register_backends(client: redis.Redis, backend_ports: list[int]) -> None:
    """What agents do: one ready instance per app, each on a port of the one fast backend
    (so the router can tell from the address which app answered, as in production)."""
    backends = {f"bench-instance-{n:03d}": Backend(
        backend=f"127.0.0.1:{port}", app_guid=f"bench-app-{n:03d}",
        app_name=f"app-{n:03d}", instance_guid=f"bench-instance-{n:03d}", index=0).to_json()
        for n, port in enumerate(backend_ports)}
    client.hset(keys.routes(AGENT), mapping=backends)  # no TTL: the bench is the agent
    client.publish(keys.ROUTES_CHANGED, "backends")


def write_table(client: redis.Redis, apps: list[int]) -> None:
    write_route_table(client, RouteTable(revision=time.time_ns(),
                                         routes=[mapped(n) for n in apps]))


class RouterUnderTest:
    """``python -m router`` with its own Redis and data dir, 100 apps on the backend."""

    def __init__(self, procs: Processes, backend_ports: list[int]) -> None:
        redis_port, self.port = free_ports(2)
        data = procs.work / "paas-data"
        self.conf = data / "router" / "nginx.conf"
        proc, log = procs.start("redis", [
            need("redis-server", "redis-server"), "--port", str(redis_port),
            "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(procs.work)])
        wait_port(redis_port, proc, "redis-server", log)
        self.redis = redis.Redis(port=redis_port, decode_responses=True)
        register_backends(self.redis, backend_ports)
        write_table(self.redis, list(range(APPS)))
        env = {**os.environ, "PAAS_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
               "PAAS_DATA_DIR": str(data), "PAAS_ROUTER_HOST": "127.0.0.1",
               "PAAS_ROUTER_PORT": str(self.port), "PAAS_ROUTER_HTTPS_PORT": "0",
               "PAAS_METRICS_PORT_ROUTER": "0",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                           os.environ.get("PYTHONPATH")]))}
        self.proc, self.log = procs.start("router", [sys.executable, "-m", "router"], env=env)

    def wait_routed(self, host: str) -> None:
        """Until the router answers 2xx for ``host``; BenchError saying what it did instead."""
        deadline = time.monotonic() + READY_TIMEOUT
        status, reason = 0, ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"the router exited with status {self.proc.returncode}:\n"
                                 f"{tail(self.log)}")
            status, reason = get(self.port, host)
            if 200 <= status < 300:
                return
            time.sleep(0.1)
        if status == 0:
            raise BenchError(f"the router did not answer on 127.0.0.1:{self.port} within "
                             f"{READY_TIMEOUT:g} s:\n{tail(self.log)}")
        raise BenchError(
            f"the router returned {status}{f' ({reason})' if reason else ''} for {host} "
            f"{READY_TIMEOUT:g} s after {APPS} apps were mapped and their backends "
            f"registered: it does not route the route table (MappedRoutes joined with "
            f"Backends by app guid) yet")

    def workers(self) -> str:
        m = re.search(r"^\s*worker_processes\s+(\w+);", self._conf_text(), re.M)
        return m[1] if m else "1"

    def _conf_text(self) -> str:
        try:
            return self.conf.read_text()
        except OSError:
            return ""

    def master_pid(self) -> int | None:
        """The pid of the router's nginx master, from the pid file its config names."""
        m = re.search(r'^\s*pid\s+"?([^";]+)"?;', self._conf_text(), re.M)
        try:
            return int(Path(m[1] if m else self.conf.parent / "nginx.pid").read_text())
        except (OSError, ValueError):
            return None


def cpu_seconds(pids: set[int]) -> float:
    """User plus system CPU the processes ``pids`` used so far."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / TICKS


@dataclass
class Target:
    """What wrk runs against: a port, the nginx master behind it, and the router process
    (for (c)) whose CPU per request is measured beside the throughput."""

    port: int
    master: Callable[[], int | None]
    router: int | None = None

    def run(self, wrk: Wrk, seconds: float) -> Result:
        workers = child_pids(self.master() or -1)
        helper = {self.router} if self.router else set()
        before = cpu_seconds(workers), cpu_seconds(helper), machine_cpu_seconds()
        result = wrk.run(self.port, seconds)
        if result.requests:
            result.proxy_us = (cpu_seconds(workers) - before[0]) / result.requests * 1e6
            result.router_us = (cpu_seconds(helper) - before[1]) / result.requests * 1e6
            result.machine_us = (machine_cpu_seconds() - before[2]) / result.requests * 1e6
        return result


class EverySecond:
    """Calls ``change(tick)`` every second in a thread; meanwhile counts the generations of
    workers of the nginx master ``master()`` (each reload starts a new one)."""

    def __init__(self, change: Callable[[int], None], master: Callable[[], int | None]) -> None:
        self.change = change
        self.master = master
        self.stop = threading.Event()
        self.changes = 0
        self.workers: set[int] = set()
        self.before: set[int] = set()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.error: Exception | None = None

    def __enter__(self) -> EverySecond:
        self.before = child_pids(self.master() or -1)
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def _run(self) -> None:
        try:
            next_change = time.monotonic()
            while not self.stop.is_set():
                if time.monotonic() >= next_change:
                    self.change(self.changes)
                    self.changes += 1
                    next_change += 1.0
                self.workers |= child_pids(self.master() or -1)
                self.stop.wait(0.05)
        except Exception as e:
            self.error = e

    @property
    def reloads(self) -> int:
        """New generations of nginx workers: the reloads nginx actually did."""
        return len(self.workers - self.before) // max(1, len(self.before))


def churn_run(wrk: Wrk, port: int, seconds: float, change: Callable[[int], None],
              master: Callable[[], int | None]) -> tuple[Result, EverySecond]:
    with EverySecond(change, master) as every:
        result = wrk.run(port, seconds, count=True)
    if every.error:
        raise BenchError(f"the change made every second failed: {every.error}")
    return result, every


def failed(result: Result) -> int:
    """Requests that got no 2xx: socket errors (a connection closed or reset with a request
    on it, a timeout) and non-2xx statuses."""
    return result.errors + max(result.non_2xx, sum(
        n for status, n in result.statuses.items() if not 200 <= status < 300))


def churn_lines(label: str, result: Result, every: EverySecond) -> list[str]:
    statuses = ", ".join(f"{s}: {n:,}" for s, n in sorted(result.statuses.items()))
    errors = ", ".join(f"{k} {v}" for k, v in result.socket_errors.items())
    lost = failed(result)
    lines = [
        f"  {label}: {every.changes} changes, {every.reloads} nginx reloads seen; "
        f"{result.requests:,} requests, {result.rps:,.0f}/s, p99 {result.p99:.2f} ms",
        f"      statuses {statuses or 'none counted'}; socket errors {errors}: "
        + ("no request failed" if not lost else f"FAILED REQUESTS: {lost}"),
    ]
    if every.reloads == 0:
        lines.append("      (no reload was seen: this run did not test reloads under load)")
    return lines


# -- the run -------------------------------------------------------------------------------

def line(label: str, runs: list[Result]) -> str:
    med = statistics.median
    cpu = med(r.proxy_us for r in runs)
    router = med(r.router_us for r in runs)
    return (f"  {label:34} {med(r.rps for r in runs):>9,.0f} {med(r.p50 for r in runs):>7.2f}"
            f" {med(r.p99 for r in runs):>7.2f} {med(r.machine_us for r in runs):>8.1f}"
            f" {cpu:>8.1f}" + (f" + {router:.1f}" if router else "")
            + f"   ({min(r.rps for r in runs):,.0f}-{max(r.rps for r in runs):,.0f} req/s)")


def paired(c: list[Result], b: list[Result], value: Callable[[Result, Result], float]) -> float:
    """The median over runs of ``value(c run, b run)``: each run's (c) measured just after
    its (b), so a slow drift of the machine's other load touches both alike."""
    return statistics.median(value(x, y) for x, y in zip(c, b, strict=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="interleaved runs of (a), (b), (c)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each wrk run")
    parser.add_argument("--churn-seconds", type=float, default=10.0,
                        help="length of each run with a reload every second")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="copy the configs and logs here before they are removed")
    args = parser.parse_args()

    wrk_binary = ensure_wrk()
    nginx = need("nginx", "nginx")
    work = Path(tempfile.mkdtemp(prefix="paas-bench-router-"))
    procs = Processes(work)
    host = host_of(TARGET)
    wrk = Wrk(wrk_binary, work, host)
    results: dict[str, list[Result]] = {"a": [], "b": [], "c": []}
    failure = ""  # why (c) could not be measured
    churn: list[tuple[str, Result, EverySecond]] = []
    try:
        *backend_ports, proxy_port = free_ports(APPS + 2)  # + the app mapped and unmapped
        backend_port = backend_ports[TARGET]
        backend = procs.nginx("backend", nginx, BACKEND_CONF, backend_port, listen=" ".join(
            f"listen 127.0.0.1:{port};" for port in backend_ports))
        router = RouterUnderTest(procs, backend_ports)
        try:
            router.wait_routed(host)
        except BenchError as e:
            failure = str(e)
        workers = router.workers()
        proxy = procs.nginx("proxy", nginx, PROXY_CONF, proxy_port, workers=workers,
                            keepalive=max(64, CONNECTIONS), backend=backend_port)
        targets = {"a": Target(backend_port, lambda: backend.pid),
                   "b": Target(proxy_port, lambda: proxy.pid)}
        if not failure:
            targets["c"] = Target(router.port, router.master_pid, router.proc.pid)
        for target in targets.values():  # warm up: connections, caches, the CPU governor
            wrk.run(target.port, 1)
        for n in range(args.runs):
            for key, target in targets.items():
                results[key].append(target.run(wrk, args.seconds))
            shown = "  ".join(f"({k}) {results[k][-1].rps:,.0f}" for k in targets)
            print(f"run {n + 1}/{args.runs} requests/s: {shown}", flush=True)
        bad = [r for r in results["c"] if r.non_2xx or r.errors]
        if bad:
            failure = (f"the router answered non-2xx or failed on {host}: "
                       f"{sum(r.non_2xx for r in bad)} non-2xx responses, "
                       f"{sum(r.errors for r in bad)} socket errors in {len(bad)} runs")
        if not failure:
            def remap(tick: int) -> None:  # map the 101st app, then unmap it, ...
                write_table(router.redis, list(range(APPS + (tick % 2 == 0))))

            churn.append(("(d) router, route table changed every second",
                          *churn_run(wrk, router.port, args.churn_seconds, remap,
                                     router.master_pid)))
            churn.append(("    beside: minimal proxy, nginx reloaded every second",
                          *churn_run(wrk, proxy_port, args.churn_seconds,
                                     lambda _tick: proxy.send_signal(signal.SIGHUP),
                                     lambda: proxy.pid)))
    finally:
        if args.keep:
            shutil.copytree(work, args.keep, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("*_temp"))
        procs.close()
        shutil.rmtree(work, ignore_errors=True)

    med = statistics.median
    a, b, c = results["a"], results["b"], results["c"]
    print()
    print(f"router benchmark: wrk -t{THREADS} -c{CONNECTIONS} on loopback, {args.seconds:g} s "
          f"per run, median of {args.runs} interleaved runs; backend: nginx return 200; "
          f"proxies: worker_processes {workers}")
    print(f"  {'':34} {'':>9} {'':>7} {'':>7} {'CPU us per request':>17}")
    print(f"  {'':34} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'machine':>8} {'proxy':>8}")
    print(line("(a) direct to the backend", a))
    print(line("(b) minimal nginx proxy", b))
    if failure:
        print(f"  (c) platform router, {APPS} apps: NOT MEASURED\n      {failure}")
        return 1
    print(line(f"(c) platform router, {APPS} apps", c))
    ratio = paired(c, b, lambda x, y: x.rps / y.rps)
    extra = paired(c, b, lambda x, y: x.p99 - y.p99)
    print(f"  (c)/(b) requests/s = {ratio:.3f}  (target >= 0.9: "
          f"{'met' if ratio >= 0.9 else 'MISSED'}; median of each run's ratio; the "
          f"medians' ratio: {med(r.rps for r in c) / med(r.rps for r in b):.2f})")
    print(f"  (c)-(b) p99        = {extra:+.3f} ms  (target <= 1 ms: "
          f"{'met' if extra <= 1.0 else 'MISSED'}; median of each run's difference)")
    print(f"  (b)/(a) requests/s = {med(r.rps for r in b) / med(r.rps for r in a):.2f}  "
          "(what any proxy in between costs on this machine)")
    machine = paired(c, b, lambda x, y: y.machine_us / x.machine_us)
    print(f"  (b)/(c) machine CPU per request = {machine:.2f}  (the requests/s ratio the "
          "CPU allows; wrk,")
    print("      backend, proxy, router and Redis together, anything else running "
          "inflates both)")
    print(f"  (c)/(b) CPU per request of the proxy's nginx workers = "
          f"{med(r.proxy_us for r in c) / med(r.proxy_us for r in b):.2f}; the router's own "
          f"process adds\n      {med(r.router_us for r in c):.1f} us per request, mostly "
          "for access lines")
    for label, result, every in churn:
        print("\n".join(churn_lines(label, result, every)))
    (_, router_d, _), (_, bare_d, _) = churn
    if failed(router_d) and failed(bare_d):
        print("      nginx itself resets keep-alive connections whose next request races a "
              "reload (old\n      workers close them unread); a client that retries "
              "idempotent requests hides this, wrk does not")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        raise SystemExit(f"router benchmark failed: {e}") from None
