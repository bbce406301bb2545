"""``paas logs``: an app's log lines, stored and live.

Like ``cf logs``: without options it follows new lines until Ctrl-C; ``--recent`` prints the
stored ones and ends. A broken connection is resumed from the last line received (the
server's ``after=``), so nothing is missed or printed twice.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click
import requests

from cli.base import client, main
from cli.client import ApiError, Client
from logpipe import SOURCES, LogLine

READ_TIMEOUT = 35.0  # the server pings every 10 s while nothing happens
BACKOFF = (0.5, 1.0, 2.0, 5.0)


def format_line(obj: dict[str, Any]) -> str:
    """One line as people read it: ``2026-11-29T19:01:02.123Z [APP/WEB/0] text``."""
    instance = obj.get("instance")
    line = LogLine(t=0.0, src=obj.get("source") or "", line=obj.get("text") or "",
                   proc=obj.get("process_type") or "",
                   idx="" if instance is None else str(instance), fd=obj.get("fd") or "")
    err = "ERR " if line.fd == "err" else ""
    return f"{obj.get('time', '')} [{line.tag}] {err}{line.line}"


class _Printer:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.last_id: str | None = None
        self.out = sys.stdout

    def feed(self, response: requests.Response) -> None:
        """Print every line of ``response`` as it comes; remember the last id.

        The server sends a chunk per batch of lines, and each is written (and flushed) at
        once: with ``--json``, a chunk of lines only is passed on whole, as the server sent
        it, and only its last line read (for its id)."""
        pending = b""
        for chunk in response.iter_content(chunk_size=65536):
            pending += chunk
            end = pending.rfind(b"\n") + 1
            if not end:
                continue
            block, pending = pending[:end], pending[end:]
            if self.as_json and b'"ping"' not in block and b"\n\n" not in block \
                    and not block.startswith(b"\n"):
                last = block[block.rfind(b"\n", 0, end - 1) + 1:]
                self.last_id = json.loads(last).get("id") or self.last_id
                self.out.write(block.decode())
                self.out.flush()
                continue
            printed: list[str] = []
            for raw in block.split(b"\n"):
                if not raw.strip():
                    continue
                obj = json.loads(raw)
                if obj.get("id"):
                    self.last_id = obj["id"]
                if obj.get("ping"):
                    continue
                printed.append(raw.decode() if self.as_json else format_line(obj))
            if printed:
                printed.append("")
                self.out.write("\n".join(printed))
                self.out.flush()


@main.command()
@click.argument("name")
@click.option("--recent", is_flag=True, help="Print the stored lines and end.")
@click.option("--lines", "-n", type=click.IntRange(1), default=1000, show_default=True,
              help="How many stored lines --recent prints (at most).")
@click.option("--source", "sources", multiple=True,
              type=click.Choice(SOURCES, case_sensitive=False),
              help="Only lines from this source (repeat for several).")
@click.option("--instance", type=click.IntRange(0), help="Only lines of this instance index.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def logs(name: str, recent: bool, lines: int, sources: tuple[str, ...],
         instance: int | None, as_json: bool) -> None:
    """Show an app's logs: follow new lines until Ctrl-C, or --recent ones.

    Sources: APP (the app's stdout and stderr, per instance), STG (staging), RTR (router),
    API (changes made through the API), HEALTH (crashes and deploys).
    """
    params: dict[str, Any] = {}
    if sources:
        params["source"] = ",".join(s.upper() for s in sources)
    if instance is not None:
        params["instance"] = instance
    api = client()
    printer = _Printer(as_json)
    if recent:
        response = api.request("GET", f"/apps/{name}/logs", stream=True,
                               params={**params, "recent": 1, "lines": lines})
        try:
            printer.feed(response)
        finally:
            response.close()
        return
    try:
        _follow(api, name, params, printer)
    except KeyboardInterrupt:
        pass


def _follow(api: Client, name: str, params: dict[str, Any], printer: _Printer) -> None:
    failures = 0
    while True:
        query = {**params, "follow": 1}
        if printer.last_id:
            query["after"] = printer.last_id
        try:
            response = api.request("GET", f"/apps/{name}/logs", stream=True,
                                   timeout=(10, READ_TIMEOUT), params=query)
        except ApiError as e:
            if e.status is not None and e.status < 500:
                raise  # not found, forbidden, ...: retrying will not help
            failures += 1
            _notice(f"{e.message}", failures)
            continue
        try:
            failures = 0
            printer.feed(response)
            reason = "the controller ended the stream"
        except requests.RequestException as e:
            reason = f"the connection to the controller broke ({type(e).__name__})"
        finally:
            response.close()
        failures += 1
        _notice(reason, failures)


def _notice(reason: str, failures: int) -> None:
    wait = BACKOFF[min(failures, len(BACKOFF)) - 1]
    click.echo(f"{reason}; reconnecting in {wait:g} s...", err=True)
    time.sleep(wait)
