"""``paas`` commands for running apps: scale, restart, stop, start, env, releases, rollback."""

from __future__ import annotations

import time
from typing import Any

import click
from rich.table import Table

from cli import follow
from cli.base import client, console, main, print_app
from cli.client import COMMENT, Client
from cli.options import (
    DISK,
    ENDPOINT,
    ENV_NAME,
    HEALTH_CHECK_TYPE,
    INSTANCES,
    INTERVAL,
    MEMORY,
    PROBE_TIMEOUT,
    START_TIMEOUT,
)
from contracts.appevents import (
    APP_DELETED,
    APP_ROUTED,
    INSTANCE_CRASHED,
    INSTANCE_RUNNING,
    INSTANCE_STOPPED,
    RELEASE_DEPLOYED,
)


def waiting(command):
    """The --wait/--no-wait and --wait-timeout options of commands that roll instances."""
    command = click.option("--wait-timeout", type=float, default=300.0, show_default=True,
                           help="Seconds to wait.")(command)
    return click.option("--wait/--no-wait", default=True, show_default=True,
                        help="Wait until the instances run.")(command)


# Events after which the app may have rolled out (a comment is the server's ping: a look at
# the app after 10 s of quiet).
_MAY_BE_DONE = (INSTANCE_RUNNING, INSTANCE_STOPPED, INSTANCE_CRASHED, APP_ROUTED,
                RELEASE_DEPLOYED, COMMENT)


def rolled_out(app: dict[str, Any]) -> bool:
    """Every instance the app wants runs its current release and generation (web ones with
    the router sending them traffic), and no other instance is left."""
    release = (app.get("release") or {}).get("version")
    want = sum(p["instances"] for p in app["processes"]) if app["state"] == "STARTED" else 0
    insts = app.get("instances", [])
    current = [i for i in insts if i["release"] == release
               and i["generation"] == app["generation"] and i["state"] == "RUNNING"
               and (i["routed"] or i["process_type"] != "web")]
    return len(current) == want == len(insts)


def _wait_for_rollout(api: Client, name: str, answer: dict[str, Any], timeout: float) -> dict:
    """Follow the app's events from the change ``answer`` is the API's answer to, until every
    instance runs the app's current release and generation (:func:`rolled_out`, looked up
    when an instance event says it may be so); the app then."""
    deadline = time.monotonic() + timeout
    tell = follow.Teller()
    with follow.interruptible(name):
        app = api.get(f"/apps/{name}")
        if rolled_out(app):
            return app
        for event in api.events(follow.stream_path(name), follow.since(answer),
                                deadline=deadline, comments=True):
            tell(event)
            if event.type == APP_DELETED:
                raise click.ClickException(f"{name} was deleted while its instances started.")
            if event.type == INSTANCE_RUNNING:
                data = event.data
                console.print(f"   {data.get('process_type', 'web')} #{data.get('index', '?')} "
                              f"running (release {data.get('release', '?')})")
            if event.type in _MAY_BE_DONE:
                app = api.get(f"/apps/{name}")
                if rolled_out(app):
                    return app
    print_app(app)
    raise click.ClickException(
        f"the instances were not all replaced after {timeout:.0f} s: 'paas app {name}' "
        "shows them; crashed ones say why.")


def _roll(api: Client, name: str, answer: dict[str, Any], wait: bool, timeout: float) -> None:
    """Follow a new release (env change, rollback) until it serves or fails."""
    version = answer["release"]["version"]
    console.print(f"Release {version} ({answer['release'].get('description') or 'new release'}"
                  "): rolling out")
    if not wait:
        return
    with follow.interruptible(name):
        follow.release_serves(api, name, follow.since(answer), version, timeout,
                              f"release {version} did not start, so {{serving}}")
    console.print(f"Release {version} serves.")


@main.command()
@click.argument("name")
@click.option("-i", "--instances", type=INSTANCES, help="Number of instances (0 to 100).")
@click.option("-m", "--memory", type=MEMORY, help="Memory per instance, e.g. 512M or 1G.")
@click.option("-k", "--disk", type=DISK, help="Disk per instance, e.g. 1G.")
@click.option("--process", "process_type", default="web", show_default=True,
              help="The process type (from the Procfile) to scale.")
@waiting
def scale(name: str, instances: int | None, memory: int | None, disk: int | None,
          process_type: str, wait: bool, wait_timeout: float) -> None:
    """Change the number, memory or disk of an app's instances.

    More or fewer instances take effect at once; new memory or disk replaces the instances
    one at a time, without downtime.
    """
    body: dict[str, object] = {}
    if instances is not None:
        body["instances"] = instances
    if memory is not None:
        body["memory_mb"] = memory
    if disk is not None:
        body["disk_mb"] = disk
    if not body:
        raise click.UsageError("say what to scale: -i INSTANCES, -m MEMORY or -k DISK.")
    api = client()
    answer = api.post(f"/apps/{name}/processes/{process_type}/scale", json=body)
    proc = next(p for p in answer["processes"] if p["type"] == process_type)
    console.print(f"Scaled {name}/{process_type} to {proc['instances']} x "
                  f"{proc['memory_mb']} MB memory, {proc['disk_mb']} MB disk")
    if wait:
        print_app(_wait_for_rollout(api, name, answer, wait_timeout))


@main.command()
@click.argument("name")
@waiting
def restart(name: str, wait: bool, wait_timeout: float) -> None:
    """Replace every instance with a fresh one, one at a time (no downtime)."""
    api = client()
    answer = api.post(f"/apps/{name}/restart")
    console.print(f"Restarting {name}, one instance at a time")
    if wait:
        print_app(_wait_for_rollout(api, name, answer, wait_timeout))


@main.command()
@click.argument("name")
@waiting
def rebalance(name: str, wait: bool, wait_timeout: float) -> None:
    """Even out an app's instances over the agents (after one came back), without downtime."""
    api = client()
    answer = api.post(f"/apps/{name}/rebalance")
    spread = ", ".join(f"{agent}: {n}" for agent, n in sorted(answer["spread"].items()))
    if not answer["rebalancing"]:
        console.print(f"{name} is spread evenly already ({spread or 'no agents'}).")
        return
    console.print(f"Rebalancing {name} ({spread}), one instance at a time")
    if wait:
        print_app(_wait_for_rollout(api, name, answer, wait_timeout))


@main.command()
@click.argument("name")
def stop(name: str) -> None:
    """Stop every instance of an app (its route answers 503 until it starts again)."""
    client().post(f"/apps/{name}/stop")
    console.print(f"Stopping {name}")


@main.command()
@click.argument("name")
@waiting
def start(name: str, wait: bool, wait_timeout: float) -> None:
    """Start a stopped app."""
    api = client()
    answer = api.post(f"/apps/{name}/start")
    console.print(f"Starting {name}")
    if wait:
        print_app(_wait_for_rollout(api, name, answer, wait_timeout))


@main.command("env")
@click.argument("name")
def show_env(name: str) -> None:
    """Show an app's environment variables."""
    env = client().get(f"/apps/{name}/env")["env"]
    if not env:
        click.echo(f"{name} has no environment variables: 'paas set-env {name} NAME VALUE' "
                   "sets one.")
    for key, value in env.items():
        click.echo(f"{key}={value}")


@main.command("set-env")
@click.argument("name")
@click.argument("key", type=ENV_NAME)
@click.argument("value")
@waiting
def set_env(name: str, key: str, value: str, wait: bool, wait_timeout: float) -> None:
    """Set an environment variable: a new release, rolled out without downtime."""
    api = client()
    result = api.patch(f"/apps/{name}/env", json={"set": {key: value}})
    if not result["changed"]:
        console.print(f"{key} already has that value: nothing to do.")
        return
    _roll(api, name, result, wait, wait_timeout)


@main.command("unset-env")
@click.argument("name")
@click.argument("key")
@waiting
def unset_env(name: str, key: str, wait: bool, wait_timeout: float) -> None:
    """Remove an environment variable: a new release, rolled out without downtime."""
    api = client()
    result = api.patch(f"/apps/{name}/env", json={"unset": [key]})
    _roll(api, name, result, wait, wait_timeout)


@main.command()
@click.argument("name")
def releases(name: str) -> None:
    """List an app's releases, newest first."""
    found = client().get(f"/apps/{name}/releases")["releases"]
    table = Table(box=None, pad_edge=False)
    for column in ("version", "status", "created", "by", "description"):
        table.add_column(column)
    for r in found:
        mark = " *" if r["current"] else ""
        status = r["status"] + (f": {r['error']}" if r.get("error") else "")
        table.add_row(f"{r['version']}{mark}", status, r["created_at"][:19].replace("T", " "),
                      r.get("created_by") or "-", r.get("description") or "")
    console.print(table)


@main.command()
@click.argument("name")
@click.option("--to", "version", type=click.IntRange(1), help="The release to go back to "
              "(default: the one that served before the current one).")
@waiting
def rollback(name: str, version: int | None, wait: bool, wait_timeout: float) -> None:
    """Run an earlier release's droplet, env and commands again, as a new release."""
    api = client()
    body = {"version": version} if version else {}
    _roll(api, name, api.post(f"/apps/{name}/rollback", json=body), wait, wait_timeout)


@main.command()
@click.argument("name")
@click.option("--max-in-flight", type=click.IntRange(1, 100),
              help="New instances a rolling deploy starts before old ones stop.")
@click.option("--health-check-type", type=HEALTH_CHECK_TYPE, help="port, http or process.")
@click.option("--endpoint", type=ENDPOINT,
              help="Path the http health check GETs (expects a 2xx).")
@click.option("--timeout", type=START_TIMEOUT,
              help="Seconds (1 to 600) an instance may take to pass its first health check.")
@click.option("--interval", type=INTERVAL,
              help="Seconds between health checks (0.2 to 600, default 2).")
@click.option("--probe-timeout", type=PROBE_TIMEOUT,
              help="Seconds one health check may take (0.1 to 60, default 1).")
@click.option("--process", "process_type", default="web", show_default=True,
              help="The process type the health check options are for.")
@click.option("--crash-restarts", type=click.IntRange(0, 100),
              help="Crashes in a row restarted at once (default 3).")
@click.option("--crash-backoff", type=float, help="First back-off after those, seconds.")
@click.option("--crash-backoff-max", type=float, help="Longest back-off, seconds.")
def configure(name: str, max_in_flight: int | None, health_check_type: str | None,
              endpoint: str | None, timeout: int | None, interval: float | None,
              probe_timeout: float | None, process_type: str,
              crash_restarts: int | None, crash_backoff: float | None,
              crash_backoff_max: float | None) -> None:
    """Change how an app is deployed, health-checked and restarted after crashes."""
    body: dict[str, object] = {}
    if max_in_flight is not None:
        body["max_in_flight"] = max_in_flight
    check = {k: v for k, v in (("type", health_check_type), ("endpoint", endpoint),
                               ("timeout", timeout), ("interval", interval),
                               ("probe_timeout", probe_timeout)) if v is not None}
    if check:
        body["health_check"] = {"process_type": process_type, **check}
    policy = {k: v for k, v in (("immediate_restarts", crash_restarts),
                                ("backoff_base", crash_backoff),
                                ("backoff_max", crash_backoff_max)) if v is not None}
    if policy:
        body["crash_policy"] = policy
    if not body:
        raise click.UsageError("nothing to change: see 'paas configure --help'.")
    app = client().patch(f"/apps/{name}", json=body)
    console.print(f"Updated {name}" + (": its instances are replaced with the new health "
                                      "check, one at a time" if check else ""))
    print_app(app)

