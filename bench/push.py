"""Push benchmark: cold push and warm re-push of the Flask fixture, to the first 200 through
the router, against a real platform started for the run. Median of several runs.

Also measured in the same run, as the floor under a warm re-push: ``docker run`` of the same
droplet image to its first 200 on a published port. Ratios are what to compare across runs
(the machine is shared and noisy; absolute times drift).

    make bench            # or: .venv/bin/python bench/push.py --cold 5 --warm 5
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import docker
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from contracts.labels import (  # noqa: E402
    KIND_BENCH,
    LABEL_APP_GUID,
    LABEL_KIND,
    LABEL_PLATFORM,
)
from launcher.sandbox import Sandbox, free_port, paas_command  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "flask-hello"


PHASES = (("upload", "-----> Buildpack:"), ("staging", "-----> Droplet:"),
          ("image", "-----> Image "))


def timed_push(sandbox: Sandbox, name: str, folder: Path, marker: str) -> dict[str, float]:
    """Seconds from starting `paas push` to the first 200 carrying ``marker`` via the router,
    and its split: upload, staging, image, start (each from the end of the one before)."""
    host = sandbox.app_host(name)
    seen: dict[str, float] = {}
    started = time.monotonic()
    proc = subprocess.Popen([paas_command(), "push", name, "-p", str(folder)],
                            env=sandbox.cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    output: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            output.append(line)
            for phase, prefix in PHASES:
                if prefix in line and phase not in seen:
                    seen[phase] = time.monotonic() - started

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while True:
        try:
            r = sandbox.router_get(host, timeout=2)
            if r.status_code == 200 and marker in r.text:
                total = time.monotonic() - started
                break
        except requests.RequestException:
            pass
        if proc.poll() is not None and proc.returncode != 0:
            reader.join(5)
            raise SystemExit("push failed:\n" + "".join(output))
        if time.monotonic() - started > 600:
            raise SystemExit("push did not serve within 600 s")
        time.sleep(0.02)
    proc.wait(timeout=600)
    reader.join(5)
    if proc.returncode != 0:
        raise SystemExit("push failed:\n" + "".join(output))
    marks = [0.0] + [seen.get(p, 0.0) for p, _ in PHASES] + [total]
    split = {p: marks[i + 1] - marks[i] for i, (p, _) in enumerate(PHASES)}
    split["start"] = total - marks[len(PHASES)]
    return {"total": total, **split}


def docker_run_floor(image: str, command: str) -> float:
    """`docker run` of the droplet image to its first 200 (no platform in the way)."""
    client = docker.from_env()
    port = free_port()
    started = time.monotonic()
    container = client.containers.run(
        image, command=["/bin/sh", "-c", f". /app/.profile.d/python.sh; exec {command}"],
        detach=True, environment={"PORT": "8080"}, ports={"8080/tcp": ("127.0.0.1", port)},
        labels={LABEL_KIND: KIND_BENCH})
    try:
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200:
                    return time.monotonic() - started
            except requests.RequestException:
                pass
            if time.monotonic() - started > 60:
                raise SystemExit("the droplet image never answered")
            time.sleep(0.02)
    finally:
        container.remove(force=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", type=int, default=5, help="cold pushes (new app each)")
    parser.add_argument("--warm", type=int, default=5, help="warm re-pushes of one app")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="paas-bench-"))
    with Sandbox() as sandbox:
        cold, warm, floor = [], [], []
        for n in range(args.cold):
            folder = work / f"cold{n}"
            shutil.copytree(FIXTURE, folder)
            cold.append(timed_push(sandbox, f"cold{n}", folder, "hello"))
            print(f"cold push {n + 1}/{args.cold}: {cold[-1]['total']:.2f} s", flush=True)
            sandbox.paas("delete", f"cold{n}", "-f")
        folder = work / "warm"
        shutil.copytree(FIXTURE, folder)
        timed_push(sandbox, "warm", folder, "hello")  # fills the build cache
        for n in range(args.warm):
            marker = f"version {uuid.uuid4().hex[:8]}"
            source = (FIXTURE / "app.py").read_text().replace("hello from paas", marker)
            (folder / "app.py").write_text(source)
            warm.append(timed_push(sandbox, "warm", folder, marker))
            print(f"warm re-push {n + 1}/{args.warm}: {warm[-1]['total']:.2f} s", flush=True)
        image = _image_of(sandbox, json.loads(sandbox.paas("app", "warm", "--json").stdout))
        for _ in range(args.warm):
            floor.append(docker_run_floor(image, "gunicorn --bind 0.0.0.0:$PORT "
                                          "--workers 2 app:app"))
    shutil.rmtree(work, ignore_errors=True)

    def med(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    c, w, f = med(cold, "total"), med(warm, "total"), statistics.median(floor)
    print()
    print("push benchmark: median, push command start -> new version answering via the router")
    print(f"  {'':34} {'total':>7} {'upload':>7} {'staging':>8} {'image':>7} {'start':>7}")
    for label, runs in (("cold push (new app, empty cache)", cold),
                        ("warm re-push (code change only)", warm)):
        print(f"  {label:34} " + " ".join(
            f"{med(runs, k):{8 if k == 'staging' else 7}.2f}"
            for k in ("total", "upload", "staging", "image", "start")) + f"   n={len(runs)}")
    print(f"  {'floor: docker run of the image':34} {f:7.2f}{'':34} n={len(floor)}")
    print(f"  warm / cold            = {w / c:5.2f}")
    print(f"  warm / floor           = {w / f:5.2f}   (1.0: as fast as starting a container)")
    print(f"  platform overhead      = {w - f:5.2f} s (warm re-push minus the floor; target 1.5)")


def _image_of(sandbox: Sandbox, app: dict) -> str:
    client = docker.from_env()
    containers = client.containers.list(ignore_removed=True, filters={"label": [
        f"{LABEL_PLATFORM}={sandbox.platform_id}", f"{LABEL_APP_GUID}={app['guid']}"]})
    return containers[0].image.tags[0]


if __name__ == "__main__":
    main()
