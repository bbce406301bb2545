"""Shared pieces of the runtime tests: a steady load generator and small waits."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import requests

FIXTURES = Path(__file__).parent.parent / "fixtures"


def runtime_app(dest: Path, version: str = "v1", manifest: str | None = None) -> Path:
    """A copy of the runtime-app fixture saying ``version``."""
    folder = dest / f"runtime-{version}"
    shutil.copytree(FIXTURES / "runtime-app", folder)
    (folder / "VERSION").write_text(version + "\n")
    if manifest is not None:
        (folder / "manifest.yml").write_text(manifest)
    return folder


def wait_for(fn: Callable[[], object], timeout: float = 20.0, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def app_json(platform, name: str) -> dict:
    shown = platform.paas("app", name, "--json")
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


def running(platform, name: str, process_type: str = "web") -> list[dict]:
    return [i for i in app_json(platform, name).get("instances", [])
            if i["state"] == "RUNNING" and i["process_type"] == process_type]


class Load:
    """Requests through the router without pause, from a few threads; counts every outcome."""

    def __init__(self, platform, host: str, threads: int = 2) -> None:
        self.url = f"http://127.0.0.1:{platform.settings.router_port}/"
        self.host = host
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.bodies: Counter[str] = Counter()
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        # A new connection per request: a client keep-alive connection can meet nginx
        # closing it in a reload (the router's concern, issue 5), which is not what these
        # tests measure.
        while not self.stop.is_set():
            try:
                r = requests.get(self.url, headers={"Host": self.host, "Connection": "close"},
                                 timeout=10)
                outcome = r.text.split(" index=")[0] if r.status_code == 200 else None
                failure = None if outcome else f"{r.status_code} {r.text[:80]!r}"
            except requests.RequestException as e:
                outcome, failure = None, f"{type(e).__name__}: {e}"
            with self.lock:
                if failure:
                    self.failures.append(failure)
                else:
                    self.bodies[outcome] += 1

    @property
    def total(self) -> int:
        with self.lock:
            return sum(self.bodies.values()) + len(self.failures)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)
