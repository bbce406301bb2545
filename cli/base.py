"""What every ``paas`` command uses: the command group, the API client, the console, and the
ways the CLI shows things (sizes, times, tables, an app). Command modules import this module,
never each other; :mod:`cli.main` gathers them into the ``paas`` command."""

from __future__ import annotations

import time

import click
from rich.console import Console
from rich.table import Table

from cli.client import Client
from cli.config import Config
from contracts.options import size_mb

console = Console(highlight=False, soft_wrap=True)


def client() -> Client:
    return Client(Config.load())


@click.group()
@click.version_option(package_name="paas")
def main() -> None:
    """Push apps to the platform and look after them."""


def parse_memory(text: str) -> int:
    """Megabytes from a size as people write it (256M, 1G, 512), any amount (quotas too)."""
    size = size_mb(text)
    if size is None or size <= 0:
        raise click.BadParameter(f"{text!r} is not a memory size: use e.g. 256M or 1G.")
    return size


def since_text(ts: float | None) -> str:
    if not ts:
        return "-"
    secs = max(0, int(time.time() - ts))
    if secs < 120:
        return f"{secs}s ago"
    if secs < 7200:
        return f"{secs // 60}m ago"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def human_bytes(n: int | float | None) -> str:
    """Sizes as people read them: 950K, 45.2M, 1.5G."""
    if n is None:
        return "-"
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= size:
            value = n / size
            return f"{value:.1f}{unit}" if value < 100 and value != int(value) \
                else f"{value:.0f}{unit}"
    return f"{int(n)}B"


def print_table(table: Table) -> None:
    """A table as wide as the terminal; piped (scripts, grep), one line per row rather than
    long cells wrapped to 80 columns."""
    out = console if console.is_terminal else Console(highlight=False, soft_wrap=True,
                                                      width=max(console.width, 240))
    out.print(table)


def _usage(inst: dict) -> tuple[str, str, str]:
    """cpu, memory used/limit and disk of one instance, as the agent last sampled them."""
    cpu = inst.get("cpu_percent")
    used, limit = inst.get("memory_bytes"), inst.get("memory_limit_bytes")
    memory = "-" if used is None else \
        human_bytes(used) + (f"/{human_bytes(limit)}" if limit else "")
    return ("-" if cpu is None else f"{cpu:.1f}%", memory, human_bytes(inst.get("disk_bytes")))


def print_app(app: dict) -> None:
    release = app.get("release") or {}
    console.print(f"[bold]{app['name']}[/]  state: {app['state']}  "
                  f"release: {release.get('version', '-')} ({release.get('status', 'none')})  "
                  f"instances: {app.get('instances_running', 0)}/{app['instances_desired']}")
    console.print(f"routes: {', '.join(app['urls']) or 'none'}")
    failed = app.get("failed_release")
    if failed:
        console.print(f"[red]release {failed['version']} failed:[/] {failed['error']}")
    table = Table(box=None, pad_edge=False)
    for column in ("process", "#", "state", "since", "cpu", "memory", "disk", "release",
                   "agent", "details"):
        table.add_column(column, justify="right" if column in ("cpu", "memory", "disk")
                         else "left")
    for inst in sorted(app.get("instances", []), key=lambda i: (i["process_type"] != "web",
                                                                 i["process_type"], i["index"])):
        state = inst["state"]
        details = inst.get("reason") or ""
        if state == "RUNNING" and not inst.get("ready", True):
            state, details = "UNHEALTHY", details or "failing its health check"
        if inst.get("crash_count"):
            wait = inst.get("restart_in") or 0
            details = (f"crashed {inst['crash_count']} times in a row"
                       f"{f', restarts in {wait:.0f} s' if wait else ''}: {details}")
        colour = {"RUNNING": "green", "CRASHED": "red", "UNHEALTHY": "red"}.get(state, "yellow")
        table.add_row(inst["process_type"], str(inst["index"]), f"[{colour}]{state}[/]",
                      since_text(inst["since"]), *_usage(inst), str(inst["release"] or "-"),
                      inst.get("agent") or "-", details)
    if app.get("instances"):
        print_table(table)
    else:
        console.print("no instances")
