"""``paas`` commands for running apps: scale, restart, stop, start, env, releases, rollback."""

from __future__ import annotations

import time

import click
from rich.table import Table

from cli.client import Client
from cli.main import (
    _print_app,
    _wait_for_cutover,
    _wait_for_release,
    client,
    console,
    main,
)
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


def waiting(command):  # noqa: ANN001, ANN201
    """The --wait/--no-wait and --wait-timeout options of commands that roll instances."""
    command = click.option("--wait-timeout", type=float, default=300.0, show_default=True,
                           help="Seconds to wait.")(command)
    return click.option("--wait/--no-wait", default=True, show_default=True,
                        help="Wait until the instances run.")(command)


def _wait_for_rollout(api: Client, name: str, timeout: float) -> dict:
    """Wait until every instance runs the app's current release and generation."""
    deadline = time.monotonic() + timeout
    while True:
        app = api.get(f"/apps/{name}")
        release = (app.get("release") or {}).get("version")
        want = {p["type"]: p["instances"] for p in app["processes"]} \
            if app["state"] == "STARTED" else {}
        insts = app.get("instances", [])
        current = [i for i in insts if i["release"] == release
                   and i["generation"] == app["generation"] and i["state"] == "RUNNING"
                   and (i["routed"] or i["process_type"] != "web")]
        others = [i for i in insts if i not in current]
        if len(current) == sum(want.values()) and not others:
            return app
        if time.monotonic() > deadline:
            _print_app(app)
            raise click.ClickException(
                f"the instances were not all replaced after {timeout:.0f} s: 'paas app {name}' "
                "shows them; crashed ones say why.")
        time.sleep(0.1)


def _roll(api: Client, name: str, release: dict, wait: bool, timeout: float) -> None:
    """Follow a new release (env change, rollback) until it serves or fails."""
    version = release["version"]
    console.print(f"Release {version} ({release.get('description') or 'new release'}): "
                  "rolling out")
    if not wait:
        return
    status = _wait_for_release(api, name, version, timeout)
    if status["status"] == "FAILED":
        raise click.ClickException(f"release {version} did not start, so the previous release "
                                   f"keeps serving: {status['error']}")
    _wait_for_cutover(api, name, version)  # as a push does: no old instance answers after
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
    app = api.post(f"/apps/{name}/processes/{process_type}/scale", json=body)
    proc = next(p for p in app["processes"] if p["type"] == process_type)
    console.print(f"Scaled {name}/{process_type} to {proc['instances']} x "
                  f"{proc['memory_mb']} MB memory, {proc['disk_mb']} MB disk")
    if wait:
        _print_app(_wait_for_rollout(api, name, wait_timeout))


@main.command()
@click.argument("name")
@waiting
def restart(name: str, wait: bool, wait_timeout: float) -> None:
    """Replace every instance with a fresh one, one at a time (no downtime)."""
    api = client()
    api.post(f"/apps/{name}/restart")
    console.print(f"Restarting {name}, one instance at a time")
    if wait:
        _print_app(_wait_for_rollout(api, name, wait_timeout))


@main.command()
@click.argument("name")
@waiting
def rebalance(name: str, wait: bool, wait_timeout: float) -> None:
    """Even out an app's instances over the agents (after one came back), without downtime."""
    api = client()
    app = api.post(f"/apps/{name}/rebalance")
    spread = ", ".join(f"{agent}: {n}" for agent, n in sorted(app["spread"].items()))
    if not app["rebalancing"]:
        console.print(f"{name} is spread evenly already ({spread or 'no agents'}).")
        return
    console.print(f"Rebalancing {name} ({spread}), one instance at a time")
    if wait:
        _print_app(_wait_for_rollout(api, name, wait_timeout))


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
    api.post(f"/apps/{name}/start")
    console.print(f"Starting {name}")
    if wait:
        _print_app(_wait_for_rollout(api, name, wait_timeout))


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
    _roll(api, name, result["release"], wait, wait_timeout)


@main.command("unset-env")
@click.argument("name")
@click.argument("key")
@waiting
def unset_env(name: str, key: str, wait: bool, wait_timeout: float) -> None:
    """Remove an environment variable: a new release, rolled out without downtime."""
    api = client()
    result = api.patch(f"/apps/{name}/env", json={"unset": [key]})
    _roll(api, name, result["release"], wait, wait_timeout)


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
    release = api.post(f"/apps/{name}/rollback", json=body)["release"]
    _roll(api, name, release, wait, wait_timeout)


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
    _print_app(app)

