"""The app and process options, and the names, with their limits: one definition each.

Every door checks a value with the function of its concept here: the manifest parser
(``cli/manifest.py``), the CLI flags (``paas push``, ``paas scale``), the API
(``controller/api/apps.py``, ``controller/api/runtime.py``) and the controller's apply step
(``controller/staging.py``). A bad value raises :class:`InvalidOption`, whose message is the
sentence every door shows for that mistake (the manifest adds its line, the API a 400).

A push's options travel as :class:`PushOptions` (a typed record, checked on the way in),
stored as :meth:`PushOptions.to_json` on the build and read back with
:meth:`PushOptions.from_json`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# -- limits -------------------------------------------------------------------------------
MAX_INSTANCES = 100
MEMORY_MB = (16, 64 * 1024)
DISK_MB = (64, 1024 * 1024)
START_TIMEOUT = (1, 600)  # seconds an instance may take to pass its first health check
CHECK_INTERVAL = (0.2, 600.0)  # seconds between health checks
PROBE_TIMEOUT = (0.1, 60.0)  # seconds one health check may take
MAX_ROUTES = 100

PORT, HTTP, PROCESS = "port", "http", "process"
HEALTH_CHECK_TYPES = (PORT, HTTP, PROCESS)
# The manifest's (Cloud Foundry's) older word for a process check.
HEALTH_CHECK_ALIASES = {"none": PROCESS}
# A start command that means "the Procfile's", as in Cloud Foundry.
PROCFILE_COMMANDS = ("null", "default")

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
APP_NAME_RE = re.compile(rf"^{_LABEL}$")
HOSTNAME_RE = re.compile(rf"^(?:\*|{_LABEL})$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PROCESS_TYPE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,30}$")
BUILDPACK_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
SIZE_RE = re.compile(r"^\s*(\d+)\s*([MmGg])?[Bb]?\s*$")


class InvalidOption(ValueError):
    """A bad option or name; the message is the sentence saying what is wrong and what to
    give instead."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# -- names --------------------------------------------------------------------------------
def app_name(value: object) -> str:
    """An app's name: one DNS label (it becomes part of the app's URL)."""
    if not isinstance(value, str) or not APP_NAME_RE.match(value):
        raise InvalidOption(
            f"{value!r} is not a valid app name: use 1 to 63 lower-case letters, digits and "
            "hyphens, starting and ending with a letter or digit (it becomes part of the URL).")
    return value


def hostname(value: object) -> str:
    """A route's host name under its domain (lower-cased): one DNS label, or ``*`` for every
    name; empty for the domain itself."""
    if value is not None and not isinstance(value, str):
        raise InvalidOption(f"{value!r} is not a hostname: use one DNS label (letters, digits, "
                            "hyphens) or '*' for every name under the domain.")
    name = (value or "").strip().lower()
    if name and not HOSTNAME_RE.match(name):
        raise InvalidOption(f"{name!r} is not a hostname: use one DNS label (letters, digits, "
                            "hyphens) or '*' for every name under the domain.")
    return name


def env_name(value: object) -> str:
    """An environment variable's name."""
    if not isinstance(value, str) or not ENV_NAME_RE.match(value):
        raise InvalidOption(f"{value!r} is not a valid environment variable name: use letters, "
                            "digits and _, not starting with a digit.")
    return value


def process_type(value: object) -> str:
    """A process type, as a Procfile names it (web, worker, ...)."""
    if not isinstance(value, str) or not PROCESS_TYPE_RE.match(value):
        raise InvalidOption(f"{value!r} is not a process type: use up to 31 lower-case "
                            "letters, digits, - or _, starting with a letter.")
    return value


def buildpack_name(value: object) -> str:
    """A buildpack's name (built-in or registered)."""
    if not isinstance(value, str) or not BUILDPACK_NAME_RE.match(value):
        raise InvalidOption(f"{value!r} is not a buildpack name: use lower-case letters, "
                            "digits, '.', '_' and '-' ('paas buildpacks' lists them).")
    return value


# -- options ------------------------------------------------------------------------------
def _is_whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def instances(value: object) -> int:
    """How many instances of a process type run."""
    if not _is_whole(value) or not 0 <= value <= MAX_INSTANCES:  # type: ignore[operator]
        raise InvalidOption(f"instances must be a whole number from 0 to {MAX_INSTANCES}, "
                            f"not {value!r}.")
    return value  # type: ignore[return-value]


def size_mb(text: object) -> int | None:
    """Megabytes from ``256M``, ``1G``, ``512`` (MB) or a whole number of MB; None if it is
    not a size."""
    if _is_whole(text):
        return text  # type: ignore[return-value]
    if not isinstance(text, str):
        return None
    match = SIZE_RE.match(text)
    if not match:
        return None
    value, unit = int(match.group(1)), (match.group(2) or "M").upper()
    return value * 1024 if unit == "G" else value


def _size(value: object, what: str, limits: tuple[int, int], example: str) -> int:
    low, high = limits
    if not _is_whole(value) or not low <= value <= high:  # type: ignore[operator]
        shown = f"{value} MB" if _is_whole(value) else repr(value)
        raise InvalidOption(f"{what} must be a size from {_mb(low)} to {_mb(high)}, such as "
                            f"{example}, not {shown}.")
    return value  # type: ignore[return-value]


def _mb(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n // (1024 * 1024)} TB"
    return f"{n // 1024} GB" if n >= 1024 else f"{n} MB"


def memory_mb(value: object) -> int:
    """Memory per instance: a whole number of MB (as the API takes it)."""
    return _size(value, "memory", MEMORY_MB, "256M or 1G")


def disk_mb(value: object) -> int:
    """Disk per instance: a whole number of MB (as the API takes it)."""
    return _size(value, "disk quota", DISK_MB, "512M or 1G")


def memory(text: object) -> int:
    """Memory per instance from a size as people write it (256M, 1G, 512), in MB."""
    mb = size_mb(text)
    return memory_mb(text if mb is None else mb)


def disk(text: object) -> int:
    """Disk per instance from a size as people write it (512M, 1G, 2048), in MB."""
    mb = size_mb(text)
    return disk_mb(text if mb is None else mb)


def command(value: object) -> str | None:
    """A start command, stripped; None for the Procfile's (``null`` or ``default``)."""
    if not isinstance(value, str) or not value.strip() or "\n" in value.strip():
        raise InvalidOption("the start command must be one non-empty line.")
    value = value.strip()
    return None if value in PROCFILE_COMMANDS else value


def health_check_type(value: object) -> str:
    """port, http or process (the manifest's ``none`` is process)."""
    if isinstance(value, str) and value in HEALTH_CHECK_ALIASES:
        return HEALTH_CHECK_ALIASES[value]
    if value not in HEALTH_CHECK_TYPES:
        raise InvalidOption(f"health-check-type must be one of {', '.join(HEALTH_CHECK_TYPES)},"
                            f" not {value!r}.")
    return value  # type: ignore[return-value]


def health_check_endpoint(value: object) -> str:
    """The path an http health check asks for."""
    if not isinstance(value, str) or not value.startswith("/") or "\n" in value:
        raise InvalidOption(f"health-check-http-endpoint must be a path starting with /, not "
                            f"{value!r}.")
    return value


def start_timeout(value: object) -> int:
    """Seconds an instance may take to pass its first health check."""
    low, high = START_TIMEOUT
    if not _is_whole(value) or not low <= value <= high:  # type: ignore[operator]
        raise InvalidOption(f"timeout must be a whole number of seconds from {low} to {high}, "
                            f"not {value!r}.")
    return value  # type: ignore[return-value]


def _seconds(value: object, what: str, limits: tuple[float, float]) -> float:
    low, high = limits
    if not _is_number(value) or not low <= value <= high:  # type: ignore[operator]
        raise InvalidOption(f"{what} must be from {low:g} to {high:g} seconds, not {value!r}.")
    return float(value)  # type: ignore[arg-type]


def health_check_interval(value: object) -> float:
    """Seconds between two health checks."""
    return _seconds(value, "health-check-interval", CHECK_INTERVAL)


def health_check_probe_timeout(value: object) -> float:
    """Seconds one health check may take (the manifest's health-check-invocation-timeout)."""
    return _seconds(value, "health-check-invocation-timeout", PROBE_TIMEOUT)


def routes(value: object) -> list[str]:
    """Routes to map: ``host.domain[/path]`` each."""
    if not isinstance(value, list) or len(value) > MAX_ROUTES or not all(
            isinstance(r, str) and r.strip() for r in value):
        raise InvalidOption(f"routes must be a list of up to {MAX_ROUTES} routes such as "
                            "'myapp.example.com' or 'example.com/api'.")
    return list(value)


def no_route(value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidOption("no-route must be true or false.")
    return value


def env(value: object) -> dict[str, str]:
    """Environment variables: names to text."""
    if not isinstance(value, Mapping):
        raise InvalidOption("env must be a mapping of variable names to text.")
    for key, text in value.items():
        env_name(key)
        if not isinstance(text, str):
            raise InvalidOption(f"the value of {key} must be text, not {text!r}.")
    return dict(value)


# -- a push's options ---------------------------------------------------------------------
# Key in the JSON form -> the function that checks its value (per process type).
PROCESS_KEYS = {
    "instances": instances,
    "memory_mb": memory_mb,
    "disk_mb": disk_mb,
    "command": command,
    "health_check_type": health_check_type,
    "health_check_endpoint": health_check_endpoint,
    "timeout": start_timeout,
    "health_check_interval": health_check_interval,
    "health_check_probe_timeout": health_check_probe_timeout,
}
APP_KEYS = {"buildpack": buildpack_name, "buildpack_blob": None, "no_cache": None,
            "routes": routes, "no_route": no_route, "env": env, "processes": None}


@dataclass
class ProcessOptions:
    """Scale, start command and health check given with a push for one process type; None
    is "not given" (the app keeps what it has). ``command_given`` with ``command`` None:
    back to the Procfile's command."""

    type: str = "web"
    instances: int | None = None
    memory_mb: int | None = None
    disk_mb: int | None = None
    command: str | None = None
    command_given: bool = False
    health_check_type: str | None = None
    health_check_endpoint: str | None = None
    timeout: int | None = None
    health_check_interval: float | None = None
    health_check_probe_timeout: float | None = None

    @classmethod
    def _checked(cls, data: Mapping[str, Any], stored: bool, **extra: Any) -> Any:
        values: dict[str, Any] = dict(extra)
        for key, check in PROCESS_KEYS.items():
            if key not in data:
                continue
            if data[key] is None:  # not given; a stored null command: the Procfile's
                if key == "command" and stored:
                    values.update(command=None, command_given=True)
                continue
            values[key] = check(data[key])
            if key == "command":
                values["command_given"] = True
        return cls(**values)

    @classmethod
    def from_json(cls, data: object, *, stored: bool = False) -> ProcessOptions:
        """One entry of a push's ``processes``: a type and the per-process keys, checked."""
        if not isinstance(data, Mapping):
            raise InvalidOption("each process must be an object with a type.")
        process_type(data.get("type"))
        unknown = set(data) - set(PROCESS_KEYS) - {"type"}
        if unknown:
            raise InvalidOption(f"a process takes only type, {', '.join(sorted(PROCESS_KEYS))},"
                                f" not {', '.join(sorted(map(str, unknown)))}.")
        return cls._checked(data, stored, type=data["type"])

    def _process_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in PROCESS_KEYS:
            value = getattr(self, key)
            if key == "command" and self.command_given:
                out[key] = value  # None: back to the Procfile's
            elif value is not None:
                out[key] = value
        return out

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, **self._process_json()}


@dataclass
class PushOptions(ProcessOptions):
    """What a push (or restage) asks for: the web process's options, the app's buildpack,
    routes and env, and the other process types'. ``buildpack_blob`` is an uploaded
    buildpack's blob; ``no_cache`` a restage without the build cache."""

    buildpack: str | None = None
    buildpack_blob: str | None = None
    no_cache: bool = False
    routes: list[str] | None = None
    no_route: bool | None = None
    env: dict[str, str] = field(default_factory=dict)
    processes: list[ProcessOptions] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: object, *, stored: bool = False) -> PushOptions:
        """Checked options from their JSON form: a request's (a null is "not given"), or, with
        ``stored``, a build's (where a null command is "back to the Procfile's"). Keys of
        neither kind (such as the ``actor`` of rows older than ``builds.actor``) are
        ignored."""
        if not isinstance(data, Mapping):
            raise InvalidOption("the push options must be a JSON object.")
        extra: dict[str, Any] = {}
        for key in ("buildpack", "routes", "no_route", "env"):
            if data.get(key) is not None:
                extra[key] = APP_KEYS[key](data[key])  # type: ignore[misc]
        if data.get("buildpack_blob") is not None:
            if not stored:
                raise InvalidOption("buildpack_blob is set by the platform: upload the "
                                    "buildpack with the push instead.")
            extra["buildpack_blob"] = str(data["buildpack_blob"])
        if stored and data.get("no_cache") is not None:  # a restage's, not a request's
            extra["no_cache"] = bool(data["no_cache"])
        if data.get("processes") is not None:
            given = data["processes"]
            if not isinstance(given, list):
                raise InvalidOption("processes must be a list of objects with a type.")
            extra["processes"] = [ProcessOptions.from_json(p, stored=stored) for p in given]
        if extra.get("routes") and extra.get("no_route"):
            raise InvalidOption("a push takes routes or no-route, not both.")
        return cls._checked(data, stored, **extra)

    def to_json(self) -> dict[str, Any]:
        """The JSON form (what ``from_json(..., stored=True)`` reads back): only what was
        given."""
        out = self._process_json()
        for key in ("buildpack", "buildpack_blob", "routes", "no_route"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.no_cache:
            out["no_cache"] = True
        if self.env:
            out["env"] = dict(self.env)
        if self.processes:
            out["processes"] = [p.to_json() for p in self.processes]
        return out

    def replace(self, **changes: Any) -> PushOptions:
        return dataclasses.replace(self, **changes)
