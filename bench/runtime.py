"""Runtime benchmark: how fast the platform gets an app serving again, and scales it out.

Against one real platform with three agents, started for the run:

- crash to serving: SIGKILL the only web container of an app; time until the router answers
  200 again (from a new instance: the old one is dead).
- agent loss to serving: SIGKILL an agent's process and its containers (a host dies); time
  until the API shows every instance RUNNING elsewhere and the router has answered from each
  index. The heartbeat TTL bounds how soon the loss can be noticed; it is printed beside.
- scale 1 -> 20: time ``paas scale -i 20`` until 20 instances are RUNNING and routed; the
  floor beside it is ``docker run`` of 20 containers of the same image, in parallel, until
  each answers on its published port.

Medians (and max) of several runs; ratios are what to compare across runs (the machine is
shared and noisy; absolute times drift).

    make bench            # or: .venv/bin/python bench/runtime.py --runs 5
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import docker
import docker.errors
import redis
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from contracts import keys  # noqa: E402
from contracts.labels import (  # noqa: E402
    KIND_BENCH,
    LABEL_AGENT,
    LABEL_APP_NAME,
    LABEL_KIND,
    LABEL_PLATFORM,
    LABEL_PROCESS,
)
from contracts.messages import Heartbeat  # noqa: E402
from dea_agent.instances import CONTAINER_PORT, LAUNCH, RUN_USER  # noqa: E402
from launcher.sandbox import Sandbox, free_ports, paas_command  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "runtime-app"
INDEX_RE = re.compile(r"index=(\d+)")
POLL = 0.02  # router polls
API_POLL = 0.05  # API polls
TIMEOUT = 180.0


class Bench:
    """The sandbox plus the clients the measurements share."""

    def __init__(self, sandbox: Sandbox, work: Path) -> None:
        self.sandbox = sandbox
        self.work = work
        self.docker = docker.from_env(timeout=120)
        self.api = requests.Session()
        self.api.headers["Authorization"] = f"Bearer {sandbox.token}"
        self.redis = redis.Redis.from_url(sandbox.settings.redis_url)

    # -- helpers ---------------------------------------------------------------------------
    def paas(self, *args: str) -> str:
        done = self.sandbox.paas(*args)
        if done.returncode != 0:
            raise SystemExit(f"paas {' '.join(args)} failed ({done.returncode}):\n"
                             f"{done.stdout}{done.stderr}")
        return done.stdout

    def push(self, name: str, *flags: str) -> None:
        folder = self.work / name
        shutil.copytree(FIXTURE, folder)
        self.paas("push", name, "-p", str(folder), *flags)

    def app(self, name: str) -> dict:
        """What ``paas app NAME --json`` prints, read from the API without a CLI process."""
        r = self.api.get(f"{self.sandbox.settings.api_url}/v1/apps/{name}", timeout=10)
        r.raise_for_status()
        return r.json()

    def web(self, name: str) -> list[dict]:
        return [i for i in self.app(name)["instances"] if i["process_type"] == "web"]

    def containers(self, *labels: str, all: bool = False) -> list:
        return self.docker.containers.list(ignore_removed=True, all=all, filters={"label": [
            f"{LABEL_PLATFORM}={self.sandbox.platform_id}", *labels]})

    def router_index(self, name: str) -> int | None:
        """The index that answered a 200 via the router, else None."""
        try:
            r = self.sandbox.router_get(self.sandbox.app_host(name), timeout=1)
        except requests.RequestException:
            return None
        if r.status_code != 200:
            return None
        found = INDEX_RE.search(r.text)
        return int(found.group(1)) if found else -1

    def wait(self, what: str, check, timeout: float = TIMEOUT, every: float = 0.1):
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(every)

    # -- 1. crash to serving ---------------------------------------------------------------
    def crash_run(self, name: str) -> float:
        [before] = [i for i in self.web(name) if i["state"] == "RUNNING"]
        [container] = self.containers(f"{LABEL_APP_NAME}={name}", f"{LABEL_PROCESS}=web")
        started = time.monotonic()
        container.kill(signal="SIGKILL")
        container.wait(timeout=10)  # dead: any 200 from now on comes from a new instance
        while self.router_index(name) is None:
            if time.monotonic() - started > TIMEOUT:
                raise SystemExit(f"{name} did not serve again within {TIMEOUT:.0f} s of a crash")
            time.sleep(POLL)
        elapsed = time.monotonic() - started
        shown = json.loads(self.paas("app", name, "--json"))
        after = [i for i in shown["instances"]
                 if i["process_type"] == "web" and i["state"] == "RUNNING"]
        if len(after) != 1 or after[0]["since"] == before["since"]:
            raise SystemExit(f"after the crash 'paas app {name}' shows no new instance: {after}")
        [new] = self.containers(f"{LABEL_APP_NAME}={name}", f"{LABEL_PROCESS}=web")
        if new.id == container.id:
            raise SystemExit("the killed container answers again: restarted in place?")
        return elapsed

    # -- 2. agent loss to serving ----------------------------------------------------------
    def agent_loss_run(self, name: str) -> dict[str, object]:
        web = self.wait("3 running instances", lambda: self._three_running(name))
        dead = next(i["agent"] for i in web if i["index"] == 0)
        lost = sorted(i["index"] for i in web if i["agent"] == dead)
        service = self.sandbox.agent_service(dead)
        started = time.monotonic()
        self.sandbox.platform.kill(service)
        for container in self.containers(f"{LABEL_AGENT}={dead}"):
            try:
                container.kill(signal="SIGKILL")
            except docker.errors.APIError:
                pass
        killed = time.monotonic() - started
        seen: set[int] = set()
        detected = placed = routed = None
        last_api = 0.0
        while placed is None or routed is None:
            now = time.monotonic()
            index = self.router_index(name)
            if index is not None:
                seen.add(index)
                if routed is None and seen >= {0, 1, 2}:
                    routed = time.monotonic() - started
            if now - last_api >= API_POLL:
                last_api = now
                insts = self.web(name)
                if detected is None and not any(i["agent"] == dead for i in insts):
                    detected = time.monotonic() - started
                running = [i for i in insts if i["state"] == "RUNNING"]
                if placed is None and detected is not None and len(running) == 3 \
                        and {i["index"] for i in running} == {0, 1, 2}:
                    placed = time.monotonic() - started
            if now - started > TIMEOUT:
                raise SystemExit(f"{name} did not recover from losing {dead} within "
                                 f"{TIMEOUT:.0f} s (router saw {sorted(seen)})")
            time.sleep(POLL)
        total = max(placed, routed)
        # Bring the host back; wait for its heartbeat and for no duplicate index.
        back = time.time()
        self.sandbox.platform.start_service(service)
        self.wait(f"a heartbeat from {dead}", lambda: self._beat_after(dead, back))
        self.wait("exactly 3 running instances", lambda: self._three_running(name))
        return {"total": total, "killed": killed, "detected": detected, "placed": placed,
                "routed": routed, "agent": dead, "lost": lost}

    def _three_running(self, name: str) -> list[dict] | None:
        web = self.web(name)
        ok = len(web) == 3 and all(i["state"] == "RUNNING" and i["routed"] for i in web) \
            and {i["index"] for i in web} == {0, 1, 2}
        return web if ok else None

    def _beat_after(self, agent_id: str, when: float) -> bool:
        raw = self.redis.get(keys.agent(agent_id))
        return raw is not None and Heartbeat.from_json(raw).sent_at > when

    # -- 3. scale 1 -> 20 ------------------------------------------------------------------
    def scale_run(self, name: str, count: int) -> dict[str, float]:
        started = time.monotonic()
        proc = subprocess.Popen([paas_command(), "scale", name, "-i", str(count)],
                                env=self.sandbox.cli_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        polled = cli = None
        while polled is None or cli is None:
            if polled is None:
                ready = [i for i in self.web(name) if i["state"] == "RUNNING" and i["routed"]]
                if len(ready) == count:
                    polled = time.monotonic() - started
            if cli is None and proc.poll() is not None:
                cli = time.monotonic() - started
                if proc.returncode != 0:
                    raise SystemExit(f"paas scale failed:\n{proc.stdout.read()}")
            if time.monotonic() - started > TIMEOUT:
                proc.kill()
                raise SystemExit(f"{name} did not reach {count} routed instances within "
                                 f"{TIMEOUT:.0f} s")
            time.sleep(API_POLL)
        proc.stdout.close()
        # Back to one, and wait until the others' containers are gone.
        self.paas("scale", name, "-i", "1")
        self.wait("one container left", lambda: len(self.containers(
            f"{LABEL_APP_NAME}={name}", f"{LABEL_PROCESS}=web")) == 1)
        return {"total": polled, "cli": cli}

    def docker_run_floor(self, template, count: int) -> float:
        """``docker run -d`` of ``count`` containers like ``template`` (the platform's
        instance), in parallel, until each answers 200 on its published port."""
        config = template.attrs["Config"]
        image = config["Image"]
        env = [e for e in config["Env"] if not e.startswith("INSTANCE_INDEX=")]
        memory = template.attrs["HostConfig"]["Memory"]
        ports = free_ports(count)
        started = time.monotonic()
        done: list[float] = []
        errors: list[str] = []
        made: list = []

        def one(n: int) -> None:
            # A client per thread: docker-py's connection pool is not made for 20 threads.
            client = docker.from_env(timeout=120)
            try:
                container = client.containers.run(
                    image, command=["/bin/sh", "-c", LAUNCH], detach=True,
                    environment=[*env, f"INSTANCE_INDEX={n}"], user=RUN_USER,
                    working_dir="/app", init=True, mem_limit=memory, memswap_limit=memory,
                    pids_limit=1024, cap_drop=["ALL"], security_opt=["no-new-privileges"],
                    ports={f"{CONTAINER_PORT}/tcp": ("127.0.0.1", ports[n])},
                    labels={LABEL_PLATFORM: self.sandbox.platform_id, LABEL_KIND: KIND_BENCH})
                made.append(container)
                while True:
                    try:
                        if requests.get(f"http://127.0.0.1:{ports[n]}/",
                                        timeout=1).status_code == 200:
                            done.append(time.monotonic() - started)
                            return
                    except requests.RequestException:
                        pass
                    if time.monotonic() - started > 120:
                        raise RuntimeError(f"container {n} never answered")
                    time.sleep(POLL)
            except Exception as e:
                errors.append(f"{n}: {e}")
            finally:
                client.close()

        threads = [threading.Thread(target=one, args=(n,)) for n in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        for container in made:
            self.docker.api.remove_container(container.id, force=True)
        if errors:
            raise SystemExit("the docker run floor failed: " + "; ".join(errors))
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each measurement")
    parser.add_argument("--scale-to", type=int, default=20, help="instances to scale 1 to")
    parser.add_argument("--keep-logs", type=Path, metavar="DIR",
                        help="copy the platform's logs here before it is removed")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="paas-bench-"))
    sandbox = Sandbox(agents=3)
    try:
        sandbox.start()
        bench = Bench(sandbox, work)
        crash, loss, scale, floor = [], [], [], []

        bench.push("crashy")
        bench.paas("configure", "crashy", "--crash-restarts", "100")
        for n in range(args.runs):
            crash.append(bench.crash_run("crashy"))
            print(f"crash to serving {n + 1}/{args.runs}: {crash[-1]:.2f} s", flush=True)
            time.sleep(1)
        bench.paas("delete", "crashy", "-f")

        bench.push("lossy", "-i", "3")
        for n in range(args.runs):
            loss.append(bench.agent_loss_run("lossy"))
            r = loss[-1]
            print(f"agent loss to serving {n + 1}/{args.runs}: {r['total']:.2f} s "
                  f"(lost {r['agent']} with index {r['lost']}; gone from the API after "
                  f"{r['detected']:.2f} s, all running {r['placed']:.2f} s, all routed "
                  f"{r['routed']:.2f} s)", flush=True)
        bench.paas("delete", "lossy", "-f")

        bench.push("scaly", "-m", "64M")
        [template] = bench.containers(f"{LABEL_APP_NAME}=scaly", f"{LABEL_PROCESS}=web")
        for n in range(args.runs):
            floor.append(bench.docker_run_floor(template, args.scale_to))
            scale.append(bench.scale_run("scaly", args.scale_to))
            print(f"scale 1 -> {args.scale_to} {n + 1}/{args.runs}: "
                  f"{scale[-1]['total']:.2f} s (CLI {scale[-1]['cli']:.2f} s; "
                  f"floor {floor[-1]:.2f} s)", flush=True)
    except BaseException:
        print("\n---- platform logs (tails) ----\n" + sandbox.logs(), file=sys.stderr)
        raise
    finally:
        if args.keep_logs:
            shutil.copytree(Path(sandbox.settings.data_dir) / "logs", args.keep_logs,
                            dirs_exist_ok=True)
        sandbox.close()
        shutil.rmtree(work, ignore_errors=True)

    ttl = sandbox.settings.heartbeat_ttl
    beat = sandbox.settings.heartbeat_interval
    lt = [r["total"] for r in loss]
    st = [r["total"] for r in scale]
    sc = statistics.median(r["cli"] for r in scale)
    med = statistics.median
    print()
    print(f"runtime benchmark: 3 agents, median and max of {args.runs} runs")
    print(f"  {'':38} {'median':>7} {'max':>7}")
    print(f"  {'crash (SIGKILL) -> serving again':38} {med(crash):7.2f} {max(crash):7.2f}")
    print(f"  {'agent loss -> all running and routed':38} {med(lt):7.2f} {max(lt):7.2f}"
          f"   (heartbeat TTL {ttl:g} s, every {beat:g} s)")
    print(f"  {'  of which: gone from the API':38} "
          f"{med(r['detected'] for r in loss):7.2f} {max(r['detected'] for r in loss):7.2f}")
    print(f"  {f'scale 1 -> {args.scale_to}: running and routed':38} "
          f"{med(st):7.2f} {max(st):7.2f}   (CLI wall time {sc:.2f})")
    print(f"  {f'floor: docker run x {args.scale_to} in parallel':38} "
          f"{med(floor):7.2f} {max(floor):7.2f}")
    print(f"  agent loss - detection = {med(r['total'] - r['detected'] for r in loss):5.2f} s "
          "(rescheduling and routing, after the TTL let the loss be seen)")
    print(f"  scale / floor          = {med(st) / med(floor):5.2f}   "
          "(1.0: as fast as starting the containers)")


if __name__ == "__main__":
    main()
