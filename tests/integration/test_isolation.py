"""Confinement tried from inside app containers of two teams, on the real engine.

A one-off task (`paas run`) runs in its app's release on its team's network, with an
instance's user and limits, so it is the probe: who am I, whom can I reach, how many
processes may I start. Every "cannot" has its control: the same target answers from the host
(or from a container Docker's default bridge leaves unfiltered), so a probe that fails for
another reason would fail the test.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests

from contracts import stack
from launcher.sandbox import paas_command
from tests.integration.runtime_helpers import FIXTURES, wait_for

pytestmark = pytest.mark.usefixtures("dump_logs_on_failure", "delete_pushed")
PUSHED: list[tuple[str, Path | None]] = []  # this test's apps, deleted after it


@pytest.fixture
def delete_pushed(platform) -> Iterator[None]:
    """Every app a test pushes is deleted after it (later tests count the platform's
    containers)."""
    yield
    while PUSHED:
        name, home = PUSHED.pop()
        _paas(platform, home, "delete", name, "-f")


def _push(platform, name: str, tmp_path: Path, *args: str,
          home: Path | None = None, manifest: str = "") -> None:
    folder = tmp_path / name
    shutil.copytree(FIXTURES / "confined-app", folder)
    if manifest:
        (folder / "manifest.yml").write_text(manifest)
    PUSHED.append((name, home))
    pushed = _paas(platform, home, "push", name, "-p", str(folder), *args)
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr


def _paas(platform, home: Path | None, *args: str, timeout: float = 300,
          ) -> subprocess.CompletedProcess[str]:
    if home is None:
        return platform.paas(*args, timeout=timeout)
    return subprocess.run([paas_command(), *args],
                          env={**platform.cli_env(), "PAAS_HOME": str(home)},
                          capture_output=True, text=True, timeout=timeout)


def _probe(platform, app: str, *args: str) -> dict[str, str]:
    ran = platform.paas("run", app, "--", "python3", "/app/probe.py", *args, timeout=180)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    answers = {}
    for line in ran.stdout.splitlines():
        name, _, rest = line.partition(" ")
        answers[name] = rest
    return answers


def _instance(platform, app: str):
    found = docker.from_env().containers.list(filters={"label": [
        f"paas.platform={platform.platform_id}", f"paas.app_name={app}", "paas.kind=instance"]})
    assert found, f"no running instance of {app}"
    return found[0]


def _address(container) -> tuple[str, str, str]:
    """(network name, container address, gateway) of an instance."""
    [(name, net)] = container.attrs["NetworkSettings"]["Networks"].items()
    return name, net["IPAddress"], net["Gateway"]


def _can_connect(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=3):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _listener(host: str, port: int = 0) -> Iterator[int]:
    """A TCP server on one of the host's own addresses (a stand-in for any platform port)."""
    server = socket.create_server((host, port))
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                server.accept()[0].close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        server.close()


METADATA = """
import socket, time
for _ in range(100):  # the address may take a moment to be usable
    try:
        server = socket.create_server(("169.254.169.254", 80))
        break
    except OSError:
        time.sleep(0.05)
while True:
    server.accept()[0].close()
"""


@contextlib.contextmanager
def _metadata_host() -> Iterator[str]:
    """A test host in a network namespace of its own that answers HTTP on 169.254.169.254,
    routed from this host over a veth pair: the cloud metadata address, made local."""
    tag = str(os.getpid() % 100000)
    ns, outer, inner = f"paas-meta-{tag}", f"pmh{tag}", f"pmn{tag}"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    ip("netns", "add", ns)
    server = None
    try:
        ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        ip("link", "set", inner, "netns", ns)
        ip("addr", "add", "169.254.170.1/30", "dev", outer)
        ip("link", "set", outer, "up")
        for args in (("link", "set", inner, "up"), ("link", "set", "lo", "up"),
                     ("addr", "add", "169.254.170.2/30", "dev", inner),
                     ("addr", "add", "169.254.169.254/32", "dev", inner),
                     ("route", "add", "default", "via", "169.254.170.1")):
            ip("netns", "exec", ns, "ip", *args)
        ip("route", "add", "169.254.169.254/32", "via", "169.254.170.2")
        server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", METADATA],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_for(lambda: _can_connect("169.254.169.254", 80), timeout=10), \
            "the metadata test host did not answer from this host"
        yield "169.254.169.254"
    finally:
        if server is not None:
            server.kill()
            server.wait(5)
        subprocess.run(["ip", "route", "del", "169.254.169.254/32"], capture_output=True)
        subprocess.run(["ip", "link", "del", outer], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_app_containers_are_confined_to_their_teams_network(platform, tmp_path: Path):
    _push(platform, "iso-a", tmp_path)
    _push(platform, "iso-a2", tmp_path)
    home_b = tmp_path / "team-b-home"
    home_b.mkdir()
    (home_b / "config").write_text(json.dumps({
        "target": platform.settings.api_url,
        "token": platform.create_token("iso-b-dev", "iso-b")}))
    _push(platform, "iso-b", tmp_path, home=home_b)

    net_a, address_a2, gateway_a = _address(_instance(platform, "iso-a2"))
    net_b, address_b, _ = _address(_instance(platform, "iso-b"))
    # Each team has a network of its own, with inter-container traffic off.
    assert net_a != net_b and net_a.startswith(f"paas-{platform.platform_id}-team-")
    client = docker.from_env()
    assert client.networks.get(net_a).attrs["Options"][
        "com.docker.network.bridge.enable_icc"] == "false"
    # Controls: the host reaches both instances, and its own services, on these addresses.
    assert _can_connect(address_a2, 8080) and _can_connect(address_b, 8080)

    # Non-root, no capabilities, no way to gain privileges.
    me = _probe(platform, "iso-a", "whoami")
    assert me["uid"] == "2000 gid 2000"
    assert me["CapEff"] == "0000000000000000" and me["CapPrm"] == "0000000000000000"
    assert me["NoNewPrivs"] == "1"

    s = platform.settings
    # The platform's services listen on 127.0.0.1, which a container never reaches; as if an
    # operator had them listen on every address, listeners on the bridge's gateway take their
    # port numbers (and any other port): the firewall must refuse all of them.
    with _listener(gateway_a) as port, _listener(gateway_a, platform.redis_port), \
            _listener(gateway_a, s.api_port), _listener(gateway_a, s.router_port), \
            _metadata_host() as metadata:
        for control in (port, platform.redis_port, s.api_port, s.router_port):
            assert _can_connect(gateway_a, control)
        reach = _probe(platform, "iso-a", "connect",
                       f"other-team={address_b}:8080", f"own-team={address_a2}:8080",
                       f"host-port=gateway:{port}", f"redis=gateway:{platform.redis_port}",
                       f"controller=gateway:{s.api_port}", f"router=gateway:{s.router_port}",
                       f"metadata={metadata}:80")
        # Control: a container on Docker's default bridge, which the platform does not
        # filter, does reach the metadata test host.
        control = client.containers.run(
            stack.run_image(s.stack_run_image), ["python3", "-c", (
                "import socket; socket.create_connection(('169.254.169.254', 80), 3); "
                "print('open')")], remove=True, network="bridge",
            labels={"paas.platform": platform.platform_id})
        assert control.decode().strip() == "open"
    for name in ("other-team", "own-team", "host-port", "redis", "controller", "router",
                 "metadata"):
        assert reach[name].split()[0] in ("refused", "unreachable"), (name, reach)


def test_a_fork_bomb_stops_at_the_pids_limit(platform, tmp_path: Path):
    _push(platform, "iso-fork", tmp_path, "--no-route")
    listed = platform.paas("apps")  # an app without a route is listed as such
    assert listed.returncode == 0, listed.stderr
    assert any("iso-fork" in line and "(no route)" in line for line in listed.stdout.splitlines())
    forked = _probe(platform, "iso-fork", "fork")
    assert "refused" in forked, forked
    assert int(forked["refused"].split()[1]) < 1024


def _crash_reasons(platform, app: str) -> list[str]:
    shown = platform.paas("events", app, "--json", "--limit", "20")
    assert shown.returncode == 0, shown.stderr
    return [e["data"].get("reason", "") for e in json.loads(shown.stdout)
            if e["type"] == "app.crashed"]


def test_an_instance_past_its_memory_or_disk_is_stopped_with_the_reason(platform,
                                                                        tmp_path: Path):
    _push(platform, "iso-limits", tmp_path, manifest=(
        "applications:\n- name: iso-limits\n  memory: 64M\n  disk_quota: 64M\n"))
    host = platform.app_host("iso-limits")
    with contextlib.suppress(requests.RequestException):
        platform.router_get(host, "/eat", timeout=20)
    reasons = wait_for(lambda: _crash_reasons(platform, "iso-limits"), timeout=30)
    assert reasons and "ran out of memory" in reasons[0], reasons

    # Back after the crash, it writes more than its disk quota and is stopped, saying so.
    def grow() -> str | None:  # once an instance is back (the router says 503 until then)
        answer = platform.router_get(host, "/grow/100", timeout=30)
        return answer.text if answer.status_code == 200 else None

    grown = wait_for(grow, timeout=60, interval=1.0)
    assert grown == "grew 100 MB\n", grown
    started = time.monotonic()
    over = wait_for(lambda: [r for r in _crash_reasons(platform, "iso-limits")
                             if "disk" in r], timeout=60)
    assert over, _crash_reasons(platform, "iso-limits")
    assert "over its quota of 64 MB, and was stopped" in over[0], over
    assert time.monotonic() - started < 60


def test_an_app_given_gvisor_runs_under_runsc_and_serves(platform, tmp_path: Path):
    if "runsc" not in docker.from_env().info().get("Runtimes", {}):
        pytest.fail("dockerd does not know runsc: run 'make test' (its set-up registers it).")
    _push(platform, "iso-gvisor", tmp_path)
    container = _instance(platform, "iso-gvisor")
    assert container.attrs["HostConfig"]["Runtime"] == "runsc"
    assert platform.router_get(platform.app_host("iso-gvisor")).text == "ok\n"
    # gVisor's own kernel answers inside (its tasks too): not the host's kernel.
    ran = platform.paas("run", "iso-gvisor", "--", "uname", "-r", timeout=120)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout.strip() and ran.stdout.strip() != os.uname().release


def _failing_buildpack(folder: Path, compile_step: str) -> Path:
    """A buildpack that detects every app and whose compile step runs ``compile_step`` (what a
    test wants to see from inside staging), then fails the build."""
    (folder / "bin").mkdir(parents=True)
    for step, body in (("detect", "exit 0"), ("release", "echo '--- {}'"),
                       ("compile", f"{compile_step}; exit 1")):
        script = folder / "bin" / step
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(0o755)
    return folder


def test_staging_containers_reach_neither_the_platform_nor_private_networks(
        platform, tmp_path: Path):
    _push(platform, "iso-target", tmp_path)
    _, address, _ = _address(_instance(platform, "iso-target"))
    staging = docker.from_env().networks.get(f"paas-{platform.platform_id}-staging")
    [config] = staging.attrs["IPAM"]["Config"]
    gateway = config.get("Gateway") or str(next(ipaddress.ip_network(config["Subnet"]).hosts()))
    # A buildpack whose compile step is the probe; it fails the build once it has answered.
    buildpack = _failing_buildpack(tmp_path / "probe-buildpack",
                                   'python3 "$1/probe.py" connect $(cat "$1/targets")')
    app = tmp_path / "probed"
    shutil.copytree(FIXTURES / "confined-app", app)
    s = platform.settings
    with _listener(gateway) as port, _listener(gateway, platform.redis_port), \
            _listener(gateway, s.api_port), _listener(gateway, s.router_port), \
            _metadata_host() as metadata:
        for control in (port, platform.redis_port, s.api_port, s.router_port):
            assert _can_connect(gateway, control)
        assert _can_connect(address, 8080)
        (app / "targets").write_text(
            f"instance={address}:8080 host-port=gateway:{port} redis=gateway:"
            f"{platform.redis_port} controller=gateway:{s.api_port} "
            f"router=gateway:{s.router_port} metadata={metadata}:80\n")
        PUSHED.append(("iso-probed", None))
        pushed = platform.paas("push", "iso-probed", "-p", str(app), "-b", str(buildpack))
    assert pushed.returncode != 0
    answers = dict(line.split()[:2] for line in pushed.stdout.splitlines()
                   if len(line.split()) >= 2 and line.split()[1] in (
                       "open", "refused", "unreachable"))
    assert set(answers) == {"instance", "host-port", "redis", "controller", "router",
                            "metadata"}, pushed.stdout
    assert "open" not in answers.values(), answers


def test_an_app_given_gvisor_is_staged_under_runsc_too(platform, tmp_path: Path):
    buildpack = _failing_buildpack(tmp_path / "kernel-buildpack",
                                   'echo "staging kernel $(uname -r)"')
    app = tmp_path / "app"
    shutil.copytree(FIXTURES / "confined-app", app)
    PUSHED.append(("iso-gvisor-build", None))
    pushed = platform.paas("push", "iso-gvisor-build", "-p", str(app), "-b", str(buildpack))
    assert pushed.returncode != 0
    [kernel] = [line.split()[-1] for line in pushed.stdout.splitlines()
                if "staging kernel" in line]
    assert kernel != os.uname().release, pushed.stdout
