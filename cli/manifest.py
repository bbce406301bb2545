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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import yaml

SIZE = re.compile(r"^\s*(\d+)\s*([MmGg])?[Bb]?\s*$")
FIELDS = {
    "name", "path", "instances", "memory", "disk_quota", "command", "buildpacks", "buildpack",
    "env", "routes", "no-route", "random-route", "health-check-type",
    "health-check-http-endpoint", "timeout", "processes", "stack",
    "health-check-interval", "health-check-invocation-timeout",
}
PROCESS_FIELDS = {"type", "instances", "memory", "disk_quota", "command", "health-check-type",
                  "health-check-http-endpoint", "timeout", "health-check-interval",
                  "health-check-invocation-timeout"}
HEALTH_CHECKS = {"port", "http", "process", "none"}


class ManifestError(click.ClickException):
    def __init__(self, path: Path, line: int | None, message: str) -> None:
        where = f"{path.name} line {line}" if line else path.name
        super().__init__(f"{where}: {message} (nothing was uploaded)")


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
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    match = SIZE.match(str(text))
    if not match:
        return None
    value, unit = int(match.group(1)), (match.group(2) or "M").upper()
    return value * 1024 if unit == "G" else value


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
    def fail(message: str) -> None:
        raise ManifestError(path, line, message)

    if key in ("processes", "routes", "buildpacks", "env"):
        data = _value(path, node, key)
    else:
        data = _scalar(path, node, key)
    if key == "name":
        if not isinstance(data, str) or not data:
            fail("name must be text")
        app.name = data
    elif key == "path":
        app.path = str(data)
    elif key == "instances":
        if not isinstance(data, int) or isinstance(data, bool) or data < 0:
            fail(f"instances must be a whole number (0 or more), not {data!r}")
        app.instances = data
    elif key in ("memory", "disk_quota"):
        size = parse_size(data)
        if size is None or size <= 0:
            fail(f"{key} must be a size such as 256M or 1G, not {data!r}")
        if key == "memory":
            app.memory_mb = size
        else:
            app.disk_mb = size
    elif key == "command":
        if not isinstance(data, str) or not data.strip():
            fail("command must be text")
        app.command = data.strip()
    elif key in ("buildpacks", "buildpack"):
        items = data if isinstance(data, list) else [data]
        if not all(isinstance(b, str) and b for b in items):
            fail(f"{key} must be a list of buildpack names or paths")
        app.buildpacks = list(items)
    elif key == "env":
        if not isinstance(data, dict):
            fail("env must be a mapping of NAME: value")
        for k, v in data.items():
            if not isinstance(k, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
                fail(f"{k!r} is not a valid environment variable name")
            if isinstance(v, dict | list):
                fail(f"env {k} must be a single value")
        app.env = {k: "" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
                   for k, v in data.items()}
    elif key == "routes":
        if not isinstance(data, list) or not all(
                isinstance(r, dict) and isinstance(r.get("route"), str) for r in data):
            fail("routes must be a list of '- route: host.domain[/path]' entries")
        app.routes = [r["route"] for r in data]
    elif key == "no-route":
        app.no_route = bool(data)
    elif key == "health-check-type":
        if data not in HEALTH_CHECKS:
            fail(f"health-check-type must be one of port, http, process, not {data!r}")
        app.health_check_type = "process" if data == "none" else data
    elif key == "health-check-http-endpoint":
        if not isinstance(data, str) or not data.startswith("/"):
            fail("health-check-http-endpoint must be a path starting with /")
        app.health_check_http_endpoint = data
    elif key == "timeout":
        if not isinstance(data, int) or isinstance(data, bool) or data <= 0:
            fail(f"timeout must be a number of seconds, not {data!r}")
        app.timeout = data
    elif key in ("health-check-interval", "health-check-invocation-timeout"):
        if not isinstance(data, int | float) or isinstance(data, bool) or data <= 0:
            fail(f"{key} must be a number of seconds, not {data!r}")
        setattr(app, key.replace("-", "_"), float(data))
    elif key == "processes":
        if not isinstance(data, list) or not all(isinstance(p, dict) for p in data):
            fail("processes must be a list of '- type: NAME' entries")
        for proc in data:
            unknown = set(proc) - PROCESS_FIELDS
            if unknown or not isinstance(proc.get("type"), str):
                fail(f"each process needs a type and only {', '.join(sorted(PROCESS_FIELDS))}")
        app.processes = data
