"""Following an app's event stream (``GET /v1/apps/<name>/stream``) to tell what a push, an
env change or a rollback does, and to know when it is over.

A command that changes an app gets ``stream_id`` in the answer: the stream's position before
the change. Following from there shows the change's own events and everything after, so
nothing is missed however long the command took to start following (within the stream's
cap). Events of other builds and releases are passed over: each is matched by its build guid
or release number.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console

from cli.client import ApiError, Client, StreamEvent
from contracts.appevents import (
    APP_DELETED,
    APP_ROUTED,
    BUILD_FAILED,
    BUILD_SUCCEEDED,
    INSTANCE_CRASHED,
    INSTANCE_PENDING,
    RELEASE_DEPLOYED,
    RELEASE_FAILED,
)

console = Console(highlight=False, soft_wrap=True)
BUILD_TIMEOUT = 1200.0  # seconds a build may stage when its log ended without its result


def stream_path(name: str) -> str:
    return f"/apps/{name}/stream"


def since(answer: dict[str, Any]) -> str:
    """Where to follow from: the answer's ``stream_id`` (a controller without one: everything
    the stream keeps; events are matched by build and release, so old ones are passed over)."""
    return str(answer.get("stream_id") or "0")


@contextmanager
def interruptible(name: str) -> Iterator[None]:
    """Ctrl-C stops the following, not the change: say so, exit 130."""
    try:
        yield
    except KeyboardInterrupt:
        click.echo(f"\nStopped following; the change goes on: 'paas app {name}' shows where "
                   "it stands.", err=True)
        raise SystemExit(130) from None


class Teller:
    """Prints the instance events worth telling while a user waits: an instance no agent has
    room for, or one that crashed (each reason once)."""

    def __init__(self, release: int | None = None) -> None:
        self.release = release
        self.told: set[str] = set()

    def __call__(self, event: StreamEvent) -> None:
        if event.type not in (INSTANCE_PENDING, INSTANCE_CRASHED):
            return
        data = event.data
        if event.type == INSTANCE_CRASHED and self.release is not None \
                and data.get("release") not in (None, self.release):
            return  # an older release's instance, on its way out
        reason = str(data.get("reason") or "no reason given")
        if reason in self.told:
            return
        self.told.add(reason)
        state = "pending" if event.type == INSTANCE_PENDING else "crashed"
        console.print(f"   [yellow]{data.get('process_type', 'web')} #{data.get('index', '?')} "
                      f"{state}:[/] {reason}")


def build_result(api: Client, name: str, position: str, guid: str,
                 timeout: float = BUILD_TIMEOUT) -> tuple[dict[str, Any], str]:
    """The build's outcome from the stream (its log ended before its result line) as the
    log's result line has it, and the stream position after it."""
    deadline = time.monotonic() + timeout
    try:
        for event in api.events(stream_path(name), position, deadline=deadline):
            data = event.data
            if event.type in (BUILD_SUCCEEDED, BUILD_FAILED) and data.get("build") == guid:
                state = "SUCCEEDED" if event.type == BUILD_SUCCEEDED else "FAILED"
                return {"state": state, "release": data.get("release"),
                        "error": data.get("error")}, event.id or position
    except ApiError as e:
        if e.status != 404:
            raise
        # A first push whose build failed takes its app away (and its stream): ask the build.
        build = api.get(f"/builds/{guid}")
        return {"state": build["state"], "release": build.get("release"),
                "error": build.get("error")}, position
    raise click.ClickException(f"build {guid} was still staging after {timeout:.0f} s.")


def web_runs(app: dict[str, Any]) -> bool:
    """Whether the app's current release runs web instances (a release whose droplet has no
    web command, such as a worker-only Procfile, runs none, whatever the scale says)."""
    web = next((p for p in app.get("processes") or [] if p.get("type") == "web"), None)
    return bool(web and web.get("command") and web.get("instances"))


def release_serves(api: Client, name: str, position: str, version: int, timeout: float,
                   failed: str) -> dict[str, Any]:
    """Follow release ``version`` until the router sends the app's traffic to it (or, for an
    app with no route, until it is deployed); the app as ``GET /v1/apps/<name>`` shows it then.

    ``failed`` is the sentence's start if the release fails, e.g. "release 3 did not start
    (the previous release keeps serving)"; ``{serving}`` in it is filled in from the event.
    """
    tell = Teller(version)
    deadline = time.monotonic() + timeout
    for event in api.events(stream_path(name), position, deadline=deadline):
        tell(event)
        data = event.data
        release = data.get("release")
        if event.type == APP_DELETED:
            raise click.ClickException(f"{name} was deleted while release {version} started.")
        if release != version:
            if event.type in (APP_ROUTED, RELEASE_DEPLOYED) and isinstance(release, int) \
                    and release > version:
                raise click.ClickException(
                    f"release {version} was replaced by release {release} (a change made "
                    f"meanwhile) before it served: 'paas releases {name}' lists them.")
            continue
        if event.type == RELEASE_FAILED:
            serving = "the previous release keeps serving" if data.get("serving") \
                else "nothing is serving"
            raise click.ClickException(f"{failed.format(serving=serving)}: "
                                       f"{data.get('reason') or 'unknown error'}")
        if event.type == APP_ROUTED:
            return api.get(f"/apps/{name}")
        if event.type == RELEASE_DEPLOYED:
            app = api.get(f"/apps/{name}")
            if not app["urls"] or not web_runs(app):
                return app  # no route, or no web instance: the router has nothing to do
    raise click.ClickException(f"release {version} was not serving after {timeout:.0f} s; "
                               f"'paas app {name}' shows its instances.")
