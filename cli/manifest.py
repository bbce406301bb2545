"""``manifest.yml`` in Cloud Foundry's format: read, check, and say which line is wrong.

    applications:
    - name: myapp
      path: .
      instances: 2
      memory: 256M
      command: gunicorn app:app
      buildpacks: [python]
      env: {GREETING: hi}

Flags given to ``paas push`` override what the manifest says.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import yaml

from contracts import options

FIELDS = {
    "name", "path", "instances", "memory", "disk_quota", "command", "buildpacks", "buildpack",
    "env", "routes", "no-route", "random-route", "health-check-type",
    "health-check-http-endpoint", "timeout", "processes", "stack",
    "health-check-interval", "health-check-invocation-timeout",
}
PROCESS_FIELDS = {"type", "instances", "memory", "disk_quota", "command", "health-check-type",
                  "health-check-http-endpoint", "timeout", "health-check-interval",
                  "health-check-invocation-timeout"}


class ManifestError(click.ClickException):
    def __init__(self, path: Path, line: int | None, message: str) -> None:
        where = f"{path.name} line {line}" if line else path.name
        super().__init__(f"{where}: {message.rstrip('.')} (nothing was uploaded)")


@dataclass
class AppManifest:
    name: str | None = None
    path: str | None = None
    instances: int | None = None
    memory_mb: int | None = None
    disk_mb: int | None = None
    command: str | None = None
    buildpacks: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    routes: list[str] = field(default_factory=list)
    no_route: bool = False
    health_check_type: str | None = None
    health_check_http_endpoint: str | None = None
    timeout: int | None = None
    health_check_interval: float | None = None
    health_check_invocation_timeout: float | None = None
    processes: list[dict[str, Any]] = field(default_factory=list)


def parse_size(text: object) -> int | None:
    """Megabytes from ``256M``, ``1G``, ``512`` (MB); None if it is not a size."""
    return options.size_mb(text)


def load(path: Path, name: str | None) -> AppManifest | None:
    """The manifest entry for ``name`` (or the only one), or None without a manifest."""
    if not path.is_file():
        return None
    try:
        root = yaml.compose(path.read_text())
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else None
        raise ManifestError(path, line, f"not valid YAML: {e.problem}") from e
    except yaml.YAMLError as e:  # the reader's: a character YAML does not allow
        raise ManifestError(path, None, f"not valid YAML: {str(e).splitlines()[0]}") from e
    except RecursionError as e:
        raise ManifestError(path, None, "not usable YAML: it is nested too deeply") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(path, None, f"cannot be read: {e}") from e
    if root is None:
        return None
    if not isinstance(root, yaml.MappingNode):
        raise ManifestError(path, _line(root), "the top level must be a mapping with "
                            "'applications:'")
    apps_node = _get(root, "applications")
    if apps_node is None:
        raise ManifestError(path, _line(root), "it has no 'applications:' list")
    if not isinstance(apps_node, yaml.SequenceNode) or not apps_node.value:
        raise ManifestError(path, _line(apps_node), "'applications' must be a list of apps")
    entries = [_app(path, node) for node in apps_node.value]
    if name is not None:
        for entry in entries:
            if entry.name == name:
                return entry
        if len(entries) == 1 and entries[0].name is None:
            return entries[0]
        names = ", ".join(e.name or "?" for e in entries)
        raise ManifestError(path, _line(apps_node), f"it has no app named {name!r} "
                            f"(it has: {names})")
    if len(entries) > 1:
        names = ", ".join(e.name or "?" for e in entries)
        raise ManifestError(path, _line(apps_node), f"it describes several apps ({names}): "
                            "name the one to push, as in 'paas push NAME'")
    return entries[0]


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _get(node: yaml.MappingNode, key: str) -> yaml.Node | None:
    for k, v in node.value:
        if k.value == key:
            return v
    return None


def _scalar(path: Path, node: yaml.Node, what: str) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise ManifestError(path, _line(node), f"{what} must be a single value")
    return _value(path, node, what)


def _value(path: Path, node: yaml.Node, what: str) -> Any:
    """The plain data of ``node`` (safe types only), or a ManifestError at its line."""
    try:
        return yaml.safe_load(yaml.serialize(node))
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ManifestError(path, _line(node), f"{what} cannot be read ({problem}): write "
                            "it as plain YAML text, lists and mappings") from e
    except RecursionError as e:
        raise ManifestError(path, _line(node), f"{what} is nested too deeply") from e


def _app(path: Path, node: yaml.Node) -> AppManifest:
    if not isinstance(node, yaml.MappingNode):
        raise ManifestError(path, _line(node), "each app must be a mapping (name: ..., ...)")
    app = AppManifest()
    for key_node, value in node.value:
        line = _line(key_node)
        if not isinstance(key_node, yaml.ScalarNode):
            raise ManifestError(path, line, "field names must be text, such as 'name:'")
        key = key_node.value
        if key not in FIELDS:
            hint = difflib.get_close_matches(key, FIELDS, n=1)
            raise ManifestError(path, line, f"unknown field {key!r}" + (
                f": did you mean {hint[0]!r}?" if hint else ""))
        _set(path, app, key, value, line)
    return app


def _set(path: Path, app: AppManifest, key: str, node: yaml.Node, line: int) -> None:
    if key in ("processes", "routes", "buildpacks", "env"):
        data = _value(path, node, key)
    else:
        data = _scalar(path, node, key)
    try:
        _check(path, app, key, data, node)
    except options.InvalidOption as e:
        raise ManifestError(path, line, e.message) from None


def _check(path: Path, app: AppManifest, key: str, data: Any, node: yaml.Node) -> None:
    """Set ``key`` of ``app`` to ``data`` as checked by :mod:`contracts.options` (which
    raises the sentence of a bad value)."""
    if key == "name":
        app.name = options.app_name(data)
    elif key == "path":
        app.path = str(data)
    elif key == "instances":
        app.instances = options.instances(data)
    elif key == "memory":
        app.memory_mb = options.memory(data)
    elif key == "disk_quota":
        app.disk_mb = options.disk(data)
    elif key == "command":
        if not isinstance(data, str):
            raise options.InvalidOption("the start command must be one non-empty line.")
        app.command = data.strip()
        options.command(app.command)
    elif key in ("buildpacks", "buildpack"):
        items = data if isinstance(data, list) else [data]
        if not all(isinstance(b, str) and b for b in items):
            raise options.InvalidOption(f"{key} must be a list of buildpack names or paths")
        app.buildpacks = list(items)
    elif key == "env":
        if not isinstance(data, dict):
            raise options.InvalidOption("env must be a mapping of NAME: value")
        for k, v in data.items():
            options.env_name(k)
            if isinstance(v, dict | list):
                raise options.InvalidOption(f"env {k} must be a single value")
        app.env = options.env({k: "" if v is None else str(v).lower() if isinstance(v, bool)
                               else str(v) for k, v in data.items()})
    elif key == "routes":
        if not isinstance(data, list) or not all(
                isinstance(r, dict) and isinstance(r.get("route"), str) for r in data):
            raise options.InvalidOption("routes must be a list of '- route: host.domain[/path]' "
                                        "entries")
        app.routes = options.routes([r["route"] for r in data])
    elif key == "no-route":
        app.no_route = options.no_route(data)
    elif key == "health-check-type":
        app.health_check_type = options.health_check_type(data)
    elif key == "health-check-http-endpoint":
        app.health_check_http_endpoint = options.health_check_endpoint(data)
    elif key == "timeout":
        app.timeout = options.start_timeout(data)
    elif key == "health-check-interval":
        app.health_check_interval = options.health_check_interval(data)
    elif key == "health-check-invocation-timeout":
        app.health_check_invocation_timeout = options.health_check_probe_timeout(data)
    elif key == "processes":
        if not isinstance(data, list) or not all(isinstance(p, dict) for p in data):
            raise options.InvalidOption("processes must be a list of '- type: NAME' entries")
        entries = node.value if isinstance(node, yaml.SequenceNode) else []
        app.processes = [_process(path, proc, entry) for proc, entry in zip(data, entries,
                                                                             strict=False)]


# A manifest's process field -> the push option it gives (sizes are converted first).
PROCESS_OPTIONS = {"instances": "instances", "command": "command",
                   "health-check-type": "health_check_type", "timeout": "timeout",
                   "health-check-http-endpoint": "health_check_endpoint",
                   "health-check-interval": "health_check_interval",
                   "health-check-invocation-timeout": "health_check_probe_timeout",
                   "memory": "memory_mb", "disk_quota": "disk_mb"}


def _process(path: Path, proc: dict[str, Any], node: yaml.Node) -> dict[str, Any]:
    """One ``processes`` entry in the push options' words (sizes in MB), each value checked;
    a bad one names its own line."""
    lines = {k.value: _line(k) for k, _ in node.value} \
        if isinstance(node, yaml.MappingNode) else {}
    unknown = set(proc) - PROCESS_FIELDS
    if unknown or not isinstance(proc.get("type"), str):
        raise ManifestError(path, _line(node), "each process needs a type and only "
                            f"{', '.join(sorted(PROCESS_FIELDS))}")
    out: dict[str, Any] = {"type": proc["type"]}
    for key, value in proc.items():
        try:
            if key == "type":
                options.process_type(value)
            elif key == "memory":
                out["memory_mb"] = options.memory(value)
            elif key == "disk_quota":
                out["disk_mb"] = options.disk(value)
            else:  # checked here for the line; sent as written (the API reads it again)
                options.PROCESS_KEYS[PROCESS_OPTIONS[key]](value)
                out[PROCESS_OPTIONS[key]] = value
        except options.InvalidOption as e:
            raise ManifestError(path, lines.get(key, _line(node)),
                                f"process {proc['type']}: {e.message}") from None
    try:
        options.ProcessOptions.from_json(out)
    except options.InvalidOption as e:
        raise ManifestError(path, _line(node), f"process {proc['type']}: {e.message}") from None
    return out
