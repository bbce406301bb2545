"""Apps: target, push, restage, list, show and delete them; buildpacks."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, urlsplit

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from cli import follow
from cli import manifest as manifest_mod
from cli.base import client, console, main, print_app
from cli.client import ApiError, Client
from cli.config import Config
from cli.manifest import AppManifest
from cli.options import INSTANCES, MEMORY
from cli.package import collect, pack
from contracts.options import InvalidOption, PushOptions, app_name


@main.command()
@click.argument("url", required=False)
@click.option("--team", help="The team new apps go to (sent with every request).")
def target(url: str | None, team: str | None) -> None:
    """Point the CLI at the controller API at URL, and/or pick the team new apps go to.

    With neither, show the current target and team.
    """
    config = Config.load()
    if url is None and team is None:
        if not config.target:
            raise click.ClickException("no API target set: run 'paas target URL' "
                                       "(make up prints the URL).")
        team = config.team or "none chosen (your only team; 'paas target --team T' picks one)"
        click.echo(f"Target: {config.target}; team: {team}")
        return
    if url is not None:
        if not urlsplit(url).scheme:
            url = f"http://{url}"
        if team is not None and url != config.target:
            raise click.UsageError("a new target has no login yet: run 'paas target URL', then "
                                   "'paas login --team T'.")
        info = Client(Config(target=url)).get("/info")
        if info.get("name") != "paas":
            raise ApiError(f"{url} answers, but it is not a paas controller.")
        if config.target != url:  # the token and the team belong to the old platform
            config.token = config.team = None
        config.target = url
    if team is not None:
        if config.target and not config.token:
            raise click.ClickException("not logged in: choose the team as you log in, with "
                                       "'paas login --team T'.")
        # The old team is not sent: it may be the one that no longer exists.
        Client(replace(config, team=None)).get(f"/teams/{quote(team, safe='')}")
        config.team = team
    config.save()
    if url is not None:
        click.echo(f"Target: {url} (apps at *.{info.get('domain')})")
    if team is not None:
        click.echo(f"New apps go to team {team}.")


def _default_name(path: Path) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", path.resolve().name.lower()).strip("-")
    return name[:63].strip("-")


@main.command()
@click.argument("name", required=False)
@click.option("-p", "--path", "path", type=click.Path(file_okay=False, path_type=Path),
              help="The app's folder (default: the manifest's path, else this folder).")
@click.option("-f", "--manifest", "manifest_path", type=click.Path(dir_okay=False, path_type=Path),
              help="The manifest (default: manifest.yml in the app's folder, if any).")
@click.option("-c", "--command",
              help="Start command of the web process (overrides the Procfile; kept for later "
                   "pushes; 'default' goes back to the Procfile).")
@click.option("-i", "--instances", type=INSTANCES, help="Number of instances (0 to 100).")
@click.option("-m", "--memory", "memory", type=MEMORY,
              help="Memory per instance, e.g. 256M or 1G.")
@click.option("-b", "--buildpack", help="Use this buildpack instead of detecting one.")
@click.option("--route", "route_urls", multiple=True, metavar="HOST[/PATH]",
              help="Map this route too (repeatable), e.g. api.example.com/v1.")
@click.option("--no-route", is_flag=True, default=None,
              help="Unmap every route: the app gets no traffic from the router.")
@click.option("--wait-timeout", type=float, default=300.0, show_default=True,
              help="Seconds to wait for the new release to serve.")
def push(name: str | None, path: Path | None, manifest_path: Path | None, command: str | None,
         instances: int | None, memory: int | None, buildpack: str | None,
         route_urls: tuple[str, ...], no_route: bool | None, wait_timeout: float) -> None:
    """Push the app in PATH as NAME: stage, release, run.

    NAME defaults to the manifest's name, else the folder's name. Flags override the manifest.
    A new app gets the route NAME.<platform domain> unless routes or --no-route are given.
    """
    folder = path or Path(".")
    manifest_file = manifest_path or folder / "manifest.yml"
    manifest = load_manifest(manifest_file, name)
    if manifest is not None and path is None and manifest.path:
        folder = manifest_file.parent / manifest.path
    if not folder.is_dir():
        raise click.ClickException(f"{folder} is not a folder: pass the app's folder with -p.")
    name = name or (manifest.name if manifest else None) or _default_name(folder)
    try:
        app_name(name)
    except InvalidOption as e:
        raise click.ClickException(e.message) from None
    options = _push_options(manifest, command, instances, memory, buildpack)
    if route_urls or (manifest is not None and manifest.routes):
        options["routes"] = list(route_urls) or list(manifest.routes)  # type: ignore[union-attr]
    if no_route or (no_route is None and manifest is not None and manifest.no_route):
        options["no_route"] = True
    try:  # as the API will: the same sentence, before anything is sent (a buildpack may be
        # a path here, made a name below)
        PushOptions.from_json({k: v for k, v in options.items() if k != "buildpack"})
    except InvalidOption as e:
        raise click.ClickException(f"{e.message.rstrip('.')} (nothing was uploaded).") from None
    given_bp = options.get("buildpack")
    if manifest is not None and buildpack is None and isinstance(given_bp, str) \
            and given_bp.startswith(("./", "../")):
        # A path in the manifest is relative to the manifest, not to where paas runs.
        options["buildpack"] = str(manifest_file.parent / given_bp)

    api = client()
    started = time.monotonic()
    try:
        entries = collect(folder)
    except OSError as e:
        raise click.ClickException(f"could not read the app folder: {e}") from e
    fingerprinted = [e for e in entries if e.sha1]
    cached: set[str] = set()
    if fingerprinted:
        found = api.post(f"/apps/{name}/resource_match", json={"resources": [
            {"sha1": e.sha1, "size": e.size} for e in fingerprinted]})["resources"]
        cached = {r["sha1"] for r in found}
    matched = [{"path": e.path, "sha1": e.sha1, "mode": e.mode} for e in fingerprinted
               if e.sha1 in cached]
    temporary: list[Path] = []
    try:
        tarball = pack(entries, cached)
    except OSError as e:
        raise click.ClickException(f"could not read the app folder: {e}") from e
    try:
        size = tarball.stat().st_size
        n = len(matched)
        reused = f", {n} unchanged file{'s' * (n != 1)} not uploaded" if n else ""
        console.print(f"Pushing [bold]{name}[/] ({len(entries)} files, upload "
                      f"{size / 1e6:.1f} MB{reused})")
        buildpack_file = _buildpack_tarball(options)
        if buildpack_file is not None and buildpack_file.name.startswith("paas-buildpack-"):
            temporary.append(buildpack_file)
        with tarball.open("rb") as f, _upload_progress(f, size) as body:
            files = {"package": ("app.tar.gz", body)}
            if buildpack_file is not None:
                files["buildpack"] = ("buildpack.tar.gz", buildpack_file.read_bytes())
            pushed = api.post(f"/apps/{name}/push", files=files,
                              data={"options": json.dumps(options),
                                    "resources": json.dumps(matched)}, timeout=600)
    finally:
        for path in (tarball, *temporary):
            path.unlink(missing_ok=True)
    _follow(api, name, pushed, wait_timeout, started)


def _follow(api: Client, name: str, pushed: dict, wait_timeout: float, started: float) -> None:
    """Stream a build's output, then follow the app's events until its release serves (the
    router sends it the app's traffic); print the app."""
    build = pushed["build"]
    position = follow.since(pushed)
    with follow.interruptible(name):
        result: dict[str, object] = {}
        for line in api.lines(f"/builds/{build['guid']}/log"):
            if line["type"] == "log":
                click.echo(f"   {line['text']}")
            elif line["type"] == "result":
                result = line
        if not result or result.get("state") == "STAGING":
            # The log ended early, or before the health manager settled the build (it is
            # slow or down): the outcome comes with the app's events.
            result, position = follow.build_result(api, name, position, build["guid"])
        if result.get("state") != "SUCCEEDED":
            raise click.ClickException(
                f"staging failed: {result.get('error') or 'unknown error'}")
        version = int(result["release"])  # type: ignore[arg-type]
        console.print(f"Release {version}: starting instances")
        app = follow.release_serves(api, name, position, version, wait_timeout,
                                    f"release {version} did not start ({{serving}})")
    took = f"(in {time.monotonic() - started:.1f} s)"
    print_app(app)
    if not app["urls"]:
        console.print(f"\n[bold green]{name}[/] is running, with no route {took}: "
                      f"'paas map-route {name} DOMAIN --hostname NAME' gives it one.")
        return
    console.print(f"\n[bold green]{name}[/] is running at [bold]{app['urls'][0]}[/] {took}")


@main.command()
@click.argument("name")
@click.option("--no-cache", is_flag=True, help="Throw the app's build cache away first.")
@click.option("--wait-timeout", type=float, default=300.0, show_default=True)
def restage(name: str, no_cache: bool, wait_timeout: float) -> None:
    """Stage the app's last push again and roll it out (e.g. to pick up new dependencies)."""
    api = client()
    started = time.monotonic()
    pushed = api.post(f"/apps/{name}/restage", json={"no_cache": no_cache})
    _follow(api, name, pushed, wait_timeout, started)


def _buildpack_tarball(options: dict[str, object]) -> Path | None:
    """-b given as a folder or a .tar.gz: the tarball to upload (the option becomes its name)."""
    given = options.get("buildpack")
    if not isinstance(given, str) or not (
            os.sep in given or given.startswith((".", "~")) or given.endswith((".tar.gz", ".tgz"))):
        return None  # a name: built-in or registered
    path = Path(given).expanduser()
    if path.is_dir():
        if not (path / "bin" / "compile").is_file():
            raise click.ClickException(f"{path} has no bin/compile: a buildpack follows the "
                                       "Heroku/Cloud Foundry contract.")
        options["buildpack"] = _buildpack_name(path.name)
        return buildpack_archive(path)
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        options["buildpack"] = _buildpack_name(path.name.split(".")[0])
        return path
    raise click.ClickException(f"the buildpack {given!r} is neither a built-in or registered "
                               "name nor a folder or .tar.gz file.")


def _buildpack_name(text: str) -> str:
    name = re.sub(r"[^a-z0-9_.-]+", "-", text.lower()).strip("-._")[:63].rstrip("-._")
    return name or "buildpack"


def buildpack_archive(folder: Path) -> Path:
    import tarfile
    import tempfile

    fd, name = tempfile.mkstemp(prefix="paas-buildpack-", suffix=".tar.gz")
    os.close(fd)
    with tarfile.open(name, "w:gz") as tar:
        tar.add(folder, arcname=".", filter=lambda i: None if "/.git" in f"/{i.name}" else i)
    return Path(name)


def load_manifest(path: Path, name: str | None) -> AppManifest | None:
    return manifest_mod.load(path, name)


def _push_options(manifest: AppManifest | None, command: str | None, instances: int | None,
                  memory_mb: int | None, buildpack: str | None) -> dict[str, object]:
    """The push options (in the API's words) from the manifest and the flags, which win;
    the manifest's values and the flags were checked by contracts.options already."""
    m = manifest or AppManifest()
    options: dict[str, object] = {}
    if command is not None or m.command is not None:
        options["command"] = command if command is not None else m.command
    if instances is not None or m.instances is not None:
        options["instances"] = instances if instances is not None else m.instances
    if memory_mb is not None or m.memory_mb is not None:
        options["memory_mb"] = memory_mb if memory_mb is not None else m.memory_mb
    if buildpack or m.buildpacks:
        options["buildpack"] = buildpack or m.buildpacks[0]
    if m.env:
        options["env"] = m.env
    if m.disk_mb is not None:
        options["disk_mb"] = m.disk_mb
    if m.health_check_type is not None:
        options["health_check_type"] = m.health_check_type
    if m.health_check_http_endpoint is not None:
        options["health_check_endpoint"] = m.health_check_http_endpoint
    if m.timeout is not None:
        options["timeout"] = m.timeout
    if m.health_check_interval is not None:
        options["health_check_interval"] = m.health_check_interval
    if m.health_check_invocation_timeout is not None:
        options["health_check_probe_timeout"] = m.health_check_invocation_timeout
    if m.processes:  # in the API's words already (cli.manifest)
        options["processes"] = [dict(p) for p in m.processes]
    return options


class _upload_progress:  # a context manager used like a function
    """A progress bar over the upload when it is large enough to wait for."""

    SHOW_FROM = 4 * 1024 * 1024

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f, self.size = f, size
        self.progress: Progress | None = None

    def __enter__(self) -> BinaryIO | _upload_progress:
        if self.size < self.SHOW_FROM or not console.is_terminal:
            return self.f
        self.progress = Progress(TextColumn("   uploading"), BarColumn(),
                                 DownloadColumn(), TransferSpeedColumn(), console=console)
        self.progress.start()
        self.task = self.progress.add_task("upload", total=self.size)
        return self

    def read(self, n: int = -1) -> bytes:
        chunk = self.f.read(n)
        if self.progress is not None:
            self.progress.advance(self.task, len(chunk))
        return chunk

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()


@main.command()
def apps() -> None:
    """List your apps."""
    listed = client().get("/apps")["apps"]
    if not listed:
        click.echo("No apps yet: 'paas push NAME' in an app's folder pushes one.")
        return
    table = Table(box=None, pad_edge=False)
    # Apps of several teams (a member of several, or an admin): names may repeat, so say whose.
    teams = len({app.get("team") for app in listed}) > 1
    for column in ("name", *(["team"] if teams else []), "state", "instances", "release", "url"):
        table.add_column(column)
    for app in listed:
        release = app.get("release") or {}
        table.add_row(app["name"], *([app.get("team") or "-"] if teams else []), app["state"],
                      f"{app.get('instances_running', 0)}/{app['instances_desired']}",
                      str(release.get("version", "-")),
                      app["urls"][0] if app["urls"] else "(no route)")
    console.print(table)


@main.command("app")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def show_app(name: str, as_json: bool) -> None:
    """Show an app: its release, URL and instances."""
    app = client().get(f"/apps/{name}")
    if as_json:
        click.echo(json.dumps(app, indent=2))
    else:
        print_app(app)


@main.command()
@click.argument("name")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
def delete(name: str, force: bool) -> None:
    """Delete an app: stop its instances and remove its route."""
    api = client()
    if not force:
        if not sys.stdin.isatty():
            raise click.ClickException(f"deleting {name} needs confirmation: pass -f.")
        click.confirm(f"Really delete the app {name}?", abort=True)
    api.delete(f"/apps/{name}")
    click.echo(f"Deleted {name}; its instances are stopping.")




@main.command("buildpacks")
def list_buildpacks() -> None:
    """List the buildpacks, in the order they are tried."""
    table = Table(box=None, pad_edge=False)
    for column in ("position", "name", "kind"):
        table.add_column(column)
    for bp in client().get("/buildpacks")["buildpacks"]:
        table.add_row(str(bp["position"]), bp["name"], bp["kind"])
    console.print(table)


@main.command("create-buildpack")
@click.argument("name")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
def create_buildpack(name: str, path: Path) -> None:
    """Register the buildpack in PATH (a folder or .tar.gz) as NAME (admins only)."""
    if path.is_dir():
        if not (path / "bin" / "compile").is_file():
            raise click.ClickException(f"{path} has no bin/compile: a buildpack follows the "
                                       "Heroku/Cloud Foundry contract.")
        archive = buildpack_archive(path)
    else:
        archive = path
    try:
        created = client().post("/buildpacks", data={"name": name},
                                files={"buildpack": ("buildpack.tar.gz", archive.read_bytes())})
    finally:
        if archive != path:
            archive.unlink(missing_ok=True)
    click.echo(f"Buildpack {name} registered at position {created['position']}.")


@main.command("delete-buildpack")
@click.argument("name")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
def delete_buildpack(name: str, force: bool) -> None:
    """Remove a registered buildpack (admins only)."""
    if not force:
        if not sys.stdin.isatty():
            raise click.ClickException(f"deleting buildpack {name} needs confirmation: pass -f.")
        click.confirm(f"Really delete the buildpack {name}?", abort=True)
    client().delete(f"/buildpacks/{name}")
    click.echo(f"Deleted buildpack {name}.")
