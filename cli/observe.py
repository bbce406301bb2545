"""``paas events`` (what happened to an app, or to the platform) and ``paas status``
(where the platform stands, for admins)."""

from __future__ import annotations

import datetime as dt
import json
import time

import click
from rich.table import Table

from cli.base import client, console, human_bytes, main, print_table, since_text


def _local_time(stamp: str | None) -> str:
    if not stamp:
        return "-"
    try:
        when = dt.datetime.fromisoformat(stamp)
    except ValueError:
        return stamp
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S")


@main.command()
@click.argument("name", required=False)
@click.option("--all", "everything", is_flag=True,
              help="Every app's events and the platform's (admins only).")
@click.option("--team", help="With --all: only this team's events.")
@click.option("-n", "--limit", type=click.IntRange(1, 1000), default=50, show_default=True,
              help="How many of the latest events to show.")
@click.option("--json", "as_json", is_flag=True, help="Print the events as JSON.")
def events(name: str | None, everything: bool, team: str | None, limit: int,
           as_json: bool) -> None:
    """What happened to an app: pushes, staging, releases, scaling, crashes, and who did it."""
    if bool(name) == everything:
        raise click.UsageError("give an app's NAME, or --all for the whole platform.")
    if team is not None and not everything:
        raise click.UsageError("--team goes with --all: 'paas events --all --team T'.")
    path = "/events" if everything else f"/apps/{name}/events"
    params: dict[str, str | int] = {"limit": limit, "order": "desc"}
    if team is not None:
        params["team"] = team
    found = client().get(path, params=params)["events"]
    found.reverse()  # oldest first, like a log: the last line is the latest
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not found:
        click.echo(f"No events for {name} yet." if name else
                   f"No events for team {team} yet." if team else "No events yet.")
        return
    table = Table(box=None, pad_edge=False)
    columns = ["time", *(["app"] if everything else []), "actor", "type", "description"]
    for column in columns:
        table.add_column(column, overflow="fold")
    for event in found:
        colour = "red" if event["type"] in ("app.crashed", "build.failed",
                                            "release.failed") else None
        kind = f"[{colour}]{event['type']}[/]" if colour else event["type"]
        table.add_row(_local_time(event["time"]), *([event["app"] or "-"] if everything
                                                     else []),
                      event["actor"], kind, event["description"])
    print_table(table)


def _check_line(name: str, check: dict) -> str:
    if check.get("ok"):
        return f"{name}: [green]ok[/] ({check.get('latency_ms')} ms)"
    return f"{name}: [red]unreachable[/] ({check.get('error')})"


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@click.option("--check", is_flag=True, help="Exit with status 1 unless all is well.")
def status(as_json: bool, check: bool) -> None:
    """The platform at a glance (admins): agents, queues, Redis, database, router."""
    body = client().get("/status")
    if as_json:
        click.echo(json.dumps(body, indent=2))
    else:
        _print_status(body)
    if check and not body.get("ok"):
        raise SystemExit(1)


def _print_status(body: dict) -> None:
    verdict = "[green]OK[/]" if body.get("ok") else "[red]DEGRADED[/]"
    console.print(f"[bold]platform[/]: {verdict}")
    console.print(_check_line("redis", body["redis"]))
    console.print(_check_line("database", body["database"]))
    manager = body.get("health_manager") or {}
    if manager.get("holder"):
        console.print(f"health manager: [green]{manager['holder']}[/] holds the lock "
                      f"(renews within {manager.get('lock_ttl')} s)")
    else:
        console.print("health manager: [red]none active[/] (no one holds the lock)")
    router = body.get("router")
    if router and router.get("reloaded_at"):
        console.print(f"router: last reload {since_text(router['reloaded_at'])} "
                      f"({router.get('hosts', 0)} hosts, {router.get('routes', 0)} routes)")
    else:
        console.print("router: [red]no reload recorded[/] (is paas-router running?)")

    agents = body.get("agents") or []
    if agents:
        table = Table(box=None, pad_edge=False, title="agents", title_justify="left")
        for column in ("agent", "address", "health", "last beat", "memory", "in use",
                       "disk", "slots", "instances"):
            table.add_column(column)
        for a in agents:
            health = "[green]healthy[/]" if a["healthy"] else "[red]late[/]"
            states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(a["states"].items()))
            table.add_row(a["id"], a["address"], health, f"{a['last_beat_age']:.1f}s ago",
                          f"{a['memory_used_mb']}/{a['memory_mb']} MB",
                          human_bytes(a.get("memory_in_use_bytes")),
                          f"{a['disk_used_mb']}/{a['disk_mb']} MB",
                          f"{a['slots_used']}/{a['slots']}",
                          f"{a['instances']}" + (f" ({states})" if states else ""))
        print_table(table)
    else:
        console.print("agents: [red]none reporting[/] (is paas-agent running?)")

    queues = body.get("queues") or []
    if queues:
        table = Table(box=None, pad_edge=False, title="queues", title_justify="left")
        table.add_column("queue")
        table.add_column("waiting", justify="right")
        table.add_column("note")
        for q in queues:
            note = "[red]its agent is not reporting[/]" if q.get("agent_alive") is False else ""
            table.add_row(q["name"], str(q["depth"]), note)
        print_table(table)
    if body.get("unacked") is not None:
        console.print(f"tasks taken but not yet done: {body['unacked']}")
    console.print(f"as of {time.strftime('%H:%M:%S', time.localtime(body.get('time')))}")
