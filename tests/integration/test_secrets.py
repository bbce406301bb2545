"""No secret lies open: an env value, a TLS private key and a task's argument, each unique, are
looked for in the raw database file, every value in Redis (the Celery queues included), the
app's log stream, the events and the platform's process logs, and found nowhere in clear. The
files that hold secrets are the platform user's alone, and Redis wants its password."""

from __future__ import annotations

import os
import stat
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import redis
import requests

from contracts import keys
from contracts.messages import Heartbeat, agent_queue
from tests.integration.runtime_helpers import runtime_app, wait_for

pytestmark = pytest.mark.usefixtures("dump_logs_on_failure")

NAME = "sec-app"
DOMAIN = "secrets.test"


def _unique(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def secrets(platform, tmp_path_factory):
    """Push an app with an env value from its manifest, set another with set-env, give a
    domain a certificate, and run a task whose argument is a third value."""
    root = tmp_path_factory.mktemp("secrets")
    values = {"pushed": _unique("pushedenv"), "env": _unique("envvalue"),
              "argument": _unique("taskarg")}
    app = runtime_app(root, "vs", manifest=(
        f"applications:\n- name: {NAME}\n  env:\n    PUSHED_SECRET: {values['pushed']}\n"))
    pushed = platform.paas("push", NAME, "-p", str(app))
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    changed = platform.paas("set-env", NAME, "DB_PASSWORD", values["env"])
    assert changed.returncode == 0, changed.stdout + changed.stderr

    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={DOMAIN}", "-addext", f"subjectAltName=DNS:*.{DOMAIN}",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    assert platform.paas("create-domain", DOMAIN).returncode == 0
    made = platform.paas("create-certificate", DOMAIN, "--cert", str(cert), "--key", str(key))
    assert made.returncode == 0, made.stderr
    mapped = platform.paas("map-route", NAME, DOMAIN, "--hostname", "www")
    assert mapped.returncode == 0, mapped.stderr
    # The body of the PEM key (its base64 lines), which no encoding of the file would hide.
    values["key"] = "".join(key.read_text().splitlines()[1:-1])[:64]

    # The task sees the env values (the agent opened them) and gets its argument.
    ran = platform.paas("run", NAME, "--", "sh", "-c",
                        'test "$DB_PASSWORD" = "$1" && test "$PUSHED_SECRET" = "$2" && '
                        'test -n "$3"', "sh", values["env"], values["pushed"],
                        values["argument"], timeout=180)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    yield values, cert
    platform.paas("delete", NAME, "-f")
    platform.paas("delete-domain", DOMAIN)


def _client(platform) -> redis.Redis:
    return redis.Redis.from_url(platform.settings.redis_url)


def _redis_values(client: redis.Redis) -> bytes:
    """Every key's name and value, read as its type needs, then DUMPed too."""
    out = []
    for name in client.scan_iter(count=1000):
        kind = client.type(name)
        out.append(name)
        if kind == b"string":
            out.append(client.get(name) or b"")
        elif kind == b"hash":
            out.extend(b"%s=%s" % kv for kv in client.hgetall(name).items())
        elif kind == b"list":
            out.extend(client.lrange(name, 0, -1))
        elif kind == b"set":
            out.extend(client.smembers(name))
        elif kind == b"zset":
            out.extend(m for m, _ in client.zrange(name, 0, -1, withscores=True))
        elif kind == b"stream":
            for _, fields in client.xrange(name):
                out.extend(b"%s=%s" % kv for kv in fields.items())
        out.append(client.dump(name) or b"")
    return b"\n".join(out)


def _absent(values: dict[str, str], haystack: bytes, where: str) -> None:
    for what, value in values.items():
        assert value.encode() not in haystack, f"the {what} value is in clear in {where}"


def test_a_task_waiting_in_its_queue_holds_no_secret(platform, secrets):
    """A task sent to an agent that never takes it: its message stays in Redis, sealed."""
    values, _ = secrets
    ghost = f"ghost-{uuid.uuid4().hex[:8]}"
    client = _client(platform)
    client.set(keys.agent(ghost), Heartbeat(
        agent_id=ghost, address="127.0.0.1", sent_at=time.time(), memory_mb=10 ** 7,
        memory_used_mb=0).to_json(), px=20_000)
    try:
        r = requests.post(f"{platform.settings.api_url}/v1/apps/{NAME}/tasks", timeout=30,
                          headers={"Authorization": f"Bearer {platform.token}"},
                          json={"command": f"echo {values['argument']}"})
        assert r.status_code == 201 and r.json()["agent"] == ghost, r.text
        assert wait_for(lambda: client.llen(agent_queue(ghost)), timeout=5)
        waiting = _redis_values(client)
        assert b"sealed" in waiting  # the message is there, sealed
        _absent(values, waiting, "Redis (a queued task message)")
    finally:
        client.delete(keys.agent(ghost), agent_queue(ghost))
        client.close()


def test_no_secret_value_is_in_clear_anywhere_the_platform_keeps_things(
        platform, secrets):
    values, cert = secrets
    data = Path(platform.settings.data_dir)
    database = b"".join(p.read_bytes() for p in data.glob("paas.db*"))
    assert len(database) > 10_000  # the real file, with the app in it
    _absent(values, database, "the database file")

    client = _client(platform)
    try:
        in_redis = _redis_values(client)
    finally:
        client.close()
    assert keys.ROUTE_TABLE.encode() in in_redis and DOMAIN.encode() in in_redis
    _absent(values, in_redis, "Redis")

    shown = platform.paas("logs", NAME, "--recent")
    assert shown.returncode == 0 and "changed env DB_PASSWORD" in shown.stdout, shown.stdout
    _absent(values, shown.stdout.encode(), "the app's log stream")

    headers = {"Authorization": f"Bearer {platform.token}"}
    api = platform.settings.api_url
    events = (requests.get(f"{api}/v1/apps/{NAME}/events", headers=headers, timeout=10).text
              + requests.get(f"{api}/v1/events", headers=headers, timeout=10).text)
    assert "sh (arguments hidden)" in events and "DB_PASSWORD" in events, events
    _absent(values, events.encode(), "the events")

    process_logs = b"".join(p.read_bytes() for p in (data / "logs").glob("*.log"))
    assert b"sh (arguments hidden)" in process_logs  # the agent's line about the task
    _absent({**values, "Redis password": platform.redis_password,
             "secret key": (data / "secret.key").read_text().strip()},
            process_logs, "the platform's process logs")
    _absent(values, platform.logs().encode(), "Sandbox.logs()")

    # The router opened the sealed key to serve HTTPS.
    port = platform.settings.router_https_port
    host = f"www.{DOMAIN}"

    def https() -> str:
        done = subprocess.run(["curl", "-sS", "--max-time", "5", "--cacert", str(cert),
                               "--resolve", f"{host}:{port}:127.0.0.1", f"https://{host}:{port}/"],
                              capture_output=True, text=True)
        return done.stdout if done.returncode == 0 else done.stderr

    assert wait_for(lambda: https().startswith("vs "), timeout=10), https()


def test_files_that_hold_secrets_are_the_platform_users_alone(platform, secrets):
    data = Path(platform.settings.data_dir)

    def mode(path: Path) -> str:
        return oct(stat.S_IMODE(os.stat(path).st_mode))

    blobs = [p for p in (data / "blobs").rglob("*") if p.is_file()]
    assert blobs, "no blob stored"
    assert mode(data) == "0o711"  # others pass through (nginx's workers), list nothing
    assert mode(data / "blobs") == mode(data / "logs") == "0o700"
    for path in (data / "paas.db", data / "secret.key", data / "redis.password",
                 data / "admin-token", blobs[0], data / "logs" / "controller.log"):
        assert mode(path) == "0o600", path
    assert all(stat.S_IMODE(os.stat(p).st_mode) & 0o077 == 0 for p in blobs)


def test_redis_refuses_a_client_without_the_password(platform):
    client = redis.Redis(port=platform.redis_port, socket_timeout=5)
    try:
        with pytest.raises(redis.AuthenticationError):
            client.get(keys.ROUTE_TABLE)
    finally:
        client.close()
    assert platform.redis_password not in subprocess.run(
        ["ps", "-eo", "args"], capture_output=True, text=True).stdout
