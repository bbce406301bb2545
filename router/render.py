"""Turn the route table and the registered backends into a complete nginx.conf.

Pure: no I/O, and the same routes and backends in any order give the same text, so the
caller compares strings to decide whether to reload.

A :class:`~contracts.routing.MappedRoute` says which app answers a host (and path); a
:class:`~contracts.messages.Backend` says where one instance of an app listens. They are
joined by app guid. Every field that reaches the config is validated first (see
:func:`route_problem`, :func:`backend_problem`): an entry that is not clean is skipped, never
escaped, so no route or backend can inject config.

The shape of the config, per host (exact ``myapp.localhost`` or wildcard
``*.apps.example.com``; nginx prefers an exact name, as it always does):

- one ``server`` on the HTTP port and, if the route's domain has a certificate and HTTPS is
  on, one on the HTTPS port;
- per route, ``location /`` (path ``""``) or ``location = /p`` plus ``location /p/`` (path
  ``/p``: matches ``/p`` and ``/p/...``, never ``/px``); nginx picks the longest prefix;
- a host without a ``""`` route answers other paths with the 404 page.

The common request takes one cheap branch: ``$paas_stream`` (two map lookups, no regex) is
set for WebSocket upgrades and ``Accept: text/event-stream``; those requests go to a named
location without response buffering and with long timeouts. Requests that carry the router's
instance cookie go to a named location whose upstream is picked by that cookie. Everything
else is proxied from the route's location to the app's upstream as it stands.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from contracts.messages import Backend
from contracts.routing import BALANCING, LEAST_CONNECTIONS, MappedRoute

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_BACKEND_V4_RE = re.compile(r"([0-9.]{7,15}):([0-9]{1,5})")
_BACKEND_V6_RE = re.compile(r"\[([0-9a-fA-F:.]{2,45})\]:([0-9]{1,5})")
_APP_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_GUID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Path segments: unreserved characters and the sub-delimiters nginx reads as plain text in a
# location. Left out: '%' (nginx matches locations on the decoded URI, so an encoded route
# path would never match), '$', ';', quotes, parentheses, '&' (nginx syntax, or not needed).
_SEGMENT_RE = re.compile(r"[A-Za-z0-9._~!*+,=:@-]+")
_MAX_PATH = 1024
_COOKIE_NAME_RE = re.compile(r"[A-Za-z0-9_]{1,64}")
# Characters that could end a quoted nginx string or start a variable.
_UNSAFE_IN_QUOTES = re.compile(r'["\\$\x00-\x1f\x7f]')

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address

# The router's own cookie: which instance a client is pinned to (its guid).
INSTANCE_COOKIE = "__PAAS_INSTANCE"

NOT_FOUND_PAGE = (
    "<!doctype html><html><head><title>404 No app here</title></head><body>"
    "<h1>404 Not Found</h1><p>No app is at <b>${paas_safe_host}</b>.</p>"
    "<p>Check the name, or push an app with <code>paas push</code>.</p></body></html>\\n"
)
UNAVAILABLE_PAGE = (
    "<!doctype html><html><head><title>503 App unavailable</title></head><body>"
    "<h1>503 Service Unavailable</h1><p>The app at <b>${paas_safe_host}</b> has no instance "
    "answering right now. Crashed instances are restarted; try again in a few seconds.</p>"
    "</body></html>\\n"
)
NOT_FOUND_JSON = (
    '{"error": "unknown_route", "detail": "No app is at ${paas_safe_host}.", '
    '"host": "${paas_safe_host}"}\\n'
)
TOO_LARGE_PAGE = (
    "<!doctype html><html><head><title>413 Request too large</title></head><body>"
    "<h1>413 Request Entity Too Large</h1><p>The request to <b>${paas_safe_host}</b> has a "
    "body larger than the router accepts (${paas_max_body}).</p></body></html>\\n"
)
TOO_LARGE_JSON = (
    '{"error": "body_too_large", "detail": "The request body is larger than the router '
    'accepts (${paas_max_body}).", "host": "${paas_safe_host}"}\\n'
)
UNAVAILABLE_JSON = (
    '{"error": "backend_unavailable", "detail": "The app at ${paas_safe_host} has no instance '
    'answering right now.", "host": "${paas_safe_host}"}\\n'
)
NO_INSTANCES_JSON = (
    '{"error": "no_instances", "detail": "The app at ${paas_safe_host} has no instance '
    'running right now.", "host": "${paas_safe_host}"}\\n'
)

# One access line per request, tab-separated. nginx escapes '"', '\\', bytes below 32 and
# above 126 in variables as \\xXX, so a tab or newline in the format always separates. The
# upstream address comes first: the router sorts every line by it, and most it only counts
# (an app's rate limit keeps few RTR lines of a busy app).
ACCESS_LOG_FIELDS = (
    "$upstream_addr",
    "$msec",
    "$request_method",
    "$request_uri",
    "$status",
    "$body_bytes_sent",
    "$request_time",
    "$paas_request_id",
    "$host",
)
# How long an idle upstream connection is kept. Shorter than the app servers' own keep-alive
# (gunicorn 2 s, Node and uvicorn 5 s), so nginx closes an idle connection before the app
# does and never sends a request on one the app is closing (a 502).
UPSTREAM_KEEPALIVE_TIMEOUT = "1s"
IDLE_CONNECTIONS_MIN, IDLE_CONNECTIONS_MAX = 64, 1024
# A request id made by the router: "<epoch s>.<ms>-<pid>-<connection>-<request>".
NEW_REQUEST_ID = "$msec-$pid-$connection-$connection_requests"
# WebSockets and server-sent events may be quiet for long; gorouter allows 900 s.
STREAM_TIMEOUT = "900s"
# How many instances one request may be tried on (a connect failure moves to the next).
NEXT_UPSTREAM_TRIES = 3
# After a reload, old workers finish their requests; open WebSockets and streams are cut
# after this long so old workers do not pile up under frequent reloads.
WORKER_SHUTDOWN_TIMEOUT = "300s"

# Error pages: X-Paas-Router-Error reason -> (status, HTML page, JSON page).
#   unknown_route        404  no route for this host (and path)
#   no_instances         503  the route's app has no registered (ready) instance
#   backend_unavailable  503  instances are registered but none answered (502/504 from nginx)
#   body_too_large       413  the body is over the router's limit
_PAGES: dict[str, tuple[int, str, str]] = {
    "unknown_route": (404, NOT_FOUND_PAGE, NOT_FOUND_JSON),
    "no_instances": (503, UNAVAILABLE_PAGE, NO_INSTANCES_JSON),
    "backend_unavailable": (503, UNAVAILABLE_PAGE, UNAVAILABLE_JSON),
    "body_too_large": (413, TOO_LARGE_PAGE, TOO_LARGE_JSON),
}


# -- validation -----------------------------------------------------------------------------


def normalize_host(host: object) -> str | None:
    """The lower-cased host if it is a DNS name or ``*.`` and a DNS name, else None."""
    if not isinstance(host, str) or not 0 < len(host) <= 253:
        return None
    host = host.lower()
    name = host[2:] if host.startswith("*.") else host
    return host if _HOST_RE.fullmatch(name) else None


def normalize_domain(domain: object) -> str | None:
    """The lower-cased domain if it is a DNS name (no wildcard), else None."""
    host = normalize_host(domain)
    return None if host is None or host.startswith("*") else host


def valid_path(path: object) -> bool:
    """True for ``""`` and ``/seg[/seg...]`` of safe characters (no ``.``/``..`` segment)."""
    if path == "":
        return True
    if not isinstance(path, str) or not path.startswith("/") or len(path) > _MAX_PATH:
        return False
    segments = path[1:].split("/")
    return all(_SEGMENT_RE.fullmatch(s) and s not in (".", "..") for s in segments)


def parse_backend(backend: object) -> tuple[_IP, int] | None:
    """``(ip, port)`` from ``"1.2.3.4:80"`` or ``"[::1]:80"``, or None if it is anything else."""
    if not isinstance(backend, str):
        return None
    m = _BACKEND_V4_RE.fullmatch(backend) or _BACKEND_V6_RE.fullmatch(backend)
    if m is None:
        return None
    try:
        ip = ipaddress.ip_address(m[1])
    except ValueError:
        return None
    if (ip.version == 6) != backend.startswith("["):
        return None
    port = int(m[2])
    return (ip, port) if 0 < port < 65536 else None


def _is_guid(value: object) -> bool:
    return isinstance(value, str) and _GUID_RE.fullmatch(value) is not None


def route_problem(route: MappedRoute) -> str | None:
    """Why ``route`` cannot be rendered (a sentence fragment), or None if it is fine."""
    if normalize_host(route.host) is None:
        return f"host {route.host!r} is not a DNS name or *.DNS name"
    if not valid_path(route.path):
        return f"path {route.path!r} is not '' or /segment[/segment...] of safe characters"
    if not _is_guid(route.guid):
        return f"route guid {route.guid!r} is not a plain token"
    if not _is_guid(route.app_guid):
        return f"app guid {route.app_guid!r} is not a plain token"
    if route.balance not in BALANCING:
        return f"balance {route.balance!r} is not one of {', '.join(BALANCING)}"
    if not isinstance(route.https_redirect, bool):
        return f"https_redirect {route.https_redirect!r} is not true or false"
    if not isinstance(route.domain, str):
        return f"domain {route.domain!r} is not a string"
    return None


def backend_problem(backend: Backend) -> str | None:
    """Why ``backend`` cannot be rendered (a sentence fragment), or None if it is fine."""
    if parse_backend(backend.backend) is None:
        return f"backend {backend.backend!r} is not ip:port"
    if not _is_guid(backend.app_guid):
        return f"app guid {backend.app_guid!r} is not a plain token"
    if not _is_guid(backend.instance_guid):
        return f"instance guid {backend.instance_guid!r} is not a plain token"
    return None


def usable_routes(routes: Iterable[MappedRoute]) -> tuple[list[MappedRoute], list[str]]:
    """The routes that can be rendered (sorted), and a sentence for each one left out.

    Of two routes with the same host and path, the one with the smaller guid is kept.
    """
    ok: dict[tuple[str, str], MappedRoute] = {}
    problems: list[str] = []
    candidates = []
    for route in routes:
        problem = route_problem(route)
        if problem:
            problems.append(f"route {route.guid!r} ({route.host!r}{route.path!r}): {problem}")
        else:
            candidates.append(route)
    for route in sorted(candidates, key=lambda r: (r.guid, repr(r))):
        key = (normalize_host(route.host) or "", route.path)
        if key in ok:
            if ok[key] != route:
                problems.append(
                    f"route {route.guid!r} ({route.host}{route.path}) is also route "
                    f"{ok[key].guid!r}; only {ok[key].guid!r} is served"
                )
            continue
        ok[key] = route
    return sorted(ok.values(), key=lambda r: (normalize_host(r.host), r.path)), problems


# -- names ----------------------------------------------------------------------------------


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:12]


def upstream_name(app_guid: str, balance: str) -> str:
    """The nginx upstream of an app's instances with one balancing method."""
    return f"app_{_digest(app_guid, balance)}"


def _pick_variable(app_guid: str, balance: str) -> str:
    return f"$paas_pick_{_digest(app_guid, balance)}"


def _instance_upstream(app_guid: str, balance: str, instance_guid: str) -> str:
    return f"inst_{_digest(app_guid, balance, instance_guid)}"


def _cookie_variable(path: str) -> str:
    return f"$paas_sticky_cookie_{_digest(path or '/')}"


# -- the model the config is written from -----------------------------------------------------


@dataclass(frozen=True)
class _Instance:
    address: str  # as nginx writes it: ip:port, [ip6]:port
    sort_key: tuple[int, int, int]
    guid: str


@dataclass(frozen=True)
class _Pool:
    """One upstream: an app's instances with one balancing method."""

    app_guid: str
    balance: str
    app_names: tuple[str, ...]
    instances: tuple[_Instance, ...]  # one per address, sorted

    @property
    def name(self) -> str:
        return upstream_name(self.app_guid, self.balance)

    @property
    def sticky(self) -> bool:
        return len(self.instances) >= 2


def _format_backend(ip: _IP, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _instances_by_app(backends: Iterable[Backend]) -> dict[str, list[_Instance]]:
    """Each app guid's instances, one per address (the smallest instance guid wins)."""
    by_app: dict[str, dict[str, _Instance]] = {}
    for b in backends:
        if backend_problem(b):
            continue
        ip, port = parse_backend(b.backend)  # type: ignore[misc]
        inst = _Instance(_format_backend(ip, port), (ip.version, int(ip), port), b.instance_guid)
        seen = by_app.setdefault(b.app_guid, {})
        if inst.address not in seen or inst.guid < seen[inst.address].guid:
            seen[inst.address] = inst
    return {app: sorted(v.values(), key=lambda i: i.sort_key) for app, v in by_app.items()}


# -- rendering --------------------------------------------------------------------------------


def _listen_address(host: str, port: int) -> str:
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"listen port {port!r} is not a TCP port")
    if host == "*":
        return f"*:{port}"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if normalize_domain(host) is None:
            raise ValueError(f"listen host {host!r} is not an IP address or DNS name") from None
        return f"{host}:{port}"
    return _format_backend(ip, port)


def _quote_path(path: str, what: str = "runtime_dir") -> str:
    if not path or _UNSAFE_IN_QUOTES.search(path):
        raise ValueError(f"{what} {path!r} is empty or holds quotes, '$' or control chars")
    return f'"{path}"'


def _grow(start: int, needed: int) -> int:
    size = start
    while size < needed:
        size *= 2
    return size


def _hash_sizes(hosts: Iterable[str]) -> tuple[int, int]:
    """``server_names_hash`` bucket and max size that fit these hosts (and grow only with them)."""
    names = list(hosts)
    bucket = _grow(128, max(map(len, names), default=0) + 32)  # name + pointer + padding
    return bucket, _grow(512, 4 * len(names))


def _access_log(path: str | None) -> list[str]:
    if path is None:
        return ["    access_log off;"]
    fmt = "\\t".join(ACCESS_LOG_FIELDS)
    return [
        "    # Access lines go to a file the router follows; it adds them to the app's log",
        "    # stream as RTR lines. Buffered: one write per 32 KB or 100 ms, not per request.",
        f"    log_format paas_rtr '{fmt}';",
        f"    access_log {_quote_path(path, 'access log path')} paas_rtr buffer=32k flush=100ms;",
    ]


def _body_limit(max_body_mb: int) -> str:
    if (
        not isinstance(max_body_mb, int)
        or isinstance(max_body_mb, bool)
        or not 0 < max_body_mb <= 1024 * 1024
    ):
        raise ValueError(f"max body size {max_body_mb!r} MB is not from 1 MB to 1 TB")
    return f"{max_body_mb}m"


def _sticky_cookie_names(names: Iterable[str]) -> list[str]:
    if isinstance(names, str):  # "JSESSIONID,SESSION", as the setting holds it
        names = [n.strip() for n in names.split(",") if n.strip()]
    out = sorted(set(names))
    for name in out:
        if not isinstance(name, str) or not _COOKIE_NAME_RE.fullmatch(name):
            raise ValueError(f"sticky cookie name {name!r} is not letters, digits and '_'")
    return out


# Request headers for the app. nginx itself drops Keep-Alive, Expect, TE and Upgrade and
# sets Connection, unless told otherwise.
_PROXY_HEADERS = [
    "proxy_set_header Host $host;",
    "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
    "proxy_set_header X-Forwarded-Proto $scheme;",
    "proxy_set_header X-Forwarded-Host $host;",
    "proxy_set_header X-Request-Id $paas_request_id;",
    "proxy_set_header X-Request-Start $paas_request_start;",
    # Hop-by-hop headers nginx would pass on.
    'proxy_set_header Proxy-Connection "";',
    'proxy_set_header Proxy-Authorization "";',
    'proxy_set_header Trailer "";',
]


def _http_context(
    *,
    rt: str,
    access_log_path: str | None,
    max_body_mb: int,
    hosts: list[str],
    tls: bool,
    maps: int,
) -> list[str]:
    def path(name: str) -> str:
        return _quote_path(f"{rt}/{name}" if rt != "/" else f"/{name}")

    bucket_size, max_size = _hash_sizes(hosts)
    out = [
        *_access_log(access_log_path),
        "    server_tokens off;",
        "    default_type application/octet-stream;",
        # Before the first map: the first map fixes the map hash sizes.
        "    map_hash_bucket_size 128;",
        f"    map_hash_max_size {_grow(2048, 4 * maps)};",
        f"    variables_hash_max_size {_grow(1024, 4 * maps)};",
        f"    client_max_body_size {_body_limit(max_body_mb)};",
        f'    map "" $paas_max_body {{ default "{max_body_mb} MB"; }}',
        f"    client_body_temp_path {path('client_body_temp')};",
        f"    proxy_temp_path {path('proxy_temp')};",
        f"    fastcgi_temp_path {path('fastcgi_temp')};",
        f"    uwsgi_temp_path {path('uwsgi_temp')};",
        f"    scgi_temp_path {path('scgi_temp')};",
        f"    server_names_hash_bucket_size {bucket_size};",
        f"    server_names_hash_max_size {max_size};",
    ]
    if tls:
        out += [
            "    ssl_protocols TLSv1.2 TLSv1.3;",
            "    ssl_session_cache shared:paas_tls:10m;",
            "    ssl_session_timeout 1h;",
        ]
    out += [
        "",
        "    # Proxying, for every location that does not say otherwise.",
        "    proxy_http_version 1.1;",
        '    proxy_set_header Connection "";  # keep upstream connections alive',
        *(f"    {h}" for h in _PROXY_HEADERS),
        "    proxy_hide_header X-Request-Id;",
        "    proxy_connect_timeout 2s;",
        "    # A connect error or timeout (or an error before the response header) tries the",
        "    # next instance. nginx never resends a non-idempotent request (POST, PATCH, LOCK)",
        "    # once it was sent to an instance (no 'non_idempotent' here), so only requests no",
        "    # app has seen, and idempotent ones, are retried.",
        "    proxy_next_upstream error timeout;",
        f"    proxy_next_upstream_tries {NEXT_UPSTREAM_TRIES};",
        "",
        "    # Keep upstream connections alive, but pass WebSocket upgrades through.",
        "    map $http_upgrade $paas_connection {",
        "        default upgrade;",
        '        "" "";',
        "    }",
        "",
        "    # Set for WebSocket upgrades and server-sent events: proxied without response",
        "    # buffering and with long timeouts. Two hash lookups, no regex.",
        "    map $http_upgrade $paas_stream {",
        '        "" $paas_event_stream;',
        "        default 1;",
        "    }",
        "    map $http_accept $paas_event_stream {",
        '        "text/event-stream" 1;',
        '        default "";',
        "    }",
        "",
        "    # The client's X-Request-Id if it is a plain token, else a new one: the time,",
        "    # the worker and its connection's serial number and request count, unique on",
        "    # this host. (nginx's random $request_id costs OpenSSL 3's RAND_bytes a request:",
        "    # more than the rest of the router's additions to a bare proxy together.)",
        "    map $http_x_request_id $paas_request_id {",
        f'        "" {NEW_REQUEST_ID};',
        '        "~^[A-Za-z0-9._-]{1,200}$" $http_x_request_id;',
        f"        default {NEW_REQUEST_ID};",
        "    }",
        "",
        "    # X-Request-Start: t=<milliseconds since the epoch>, as gorouter and Heroku send it.",
        "    map $msec $paas_request_start {",
        '        "~^(?<paas_s>[0-9]+)\\.(?<paas_ms>[0-9]+)$" "t=$paas_s$paas_ms";',
        '        default "";',
        "    }",
        "",
        "    # Error pages in JSON for clients that accept JSON.",
    ]
    for reason in _PAGES:
        out += [
            f"    map $http_accept $paas_{reason}_page {{",
            f'        "~*application/json" @paas_{reason}_json;',
            f"        default @paas_{reason};",
            "    }",
        ]
    out += [
        "",
        "    # The host as shown on error pages: echoed only if it looks like a DNS name.",
        "    map $host $paas_safe_host {",
        '        "~^[a-z0-9.-]{1,253}$" $host;',
        '        default "this host";',
        "    }",
    ]
    return out


def _page_locations(reasons: Iterable[str]) -> list[str]:
    out = []
    for reason in reasons:
        status, html, as_json = _PAGES[reason]
        for suffix, content_type, body in (
            ("", "text/html", f'"{html}"'),
            ("_json", "application/json", f"'{as_json}'"),
        ):
            out += [
                f"        location @paas_{reason}{suffix} {{",
                f"            default_type {content_type};",
                f"            add_header X-Paas-Router-Error {reason} always;",
                "            add_header X-Request-Id $paas_request_id always;",
                f"            return {status} {body};",
                "        }",
            ]
    return out


def _sticky_maps(pools: list[_Pool], cookie_names: list[str], paths: set[str]) -> list[str]:
    """The maps behind sticky sessions (only for pools of two or more instances)."""
    sticky = [p for p in pools if p.sticky]
    if not sticky:
        return []
    cookie = INSTANCE_COOKIE
    by_address: dict[str, str] = {}
    for pool in sticky:
        for inst in pool.instances:
            by_address.setdefault(inst.address, inst.guid)
    out = [
        "",
        f"    # Sticky sessions: when an app sets {' or '.join(cookie_names)}, the router adds",
        f"    # {cookie}=<instance guid> (the instance that answered; none if nginx had to try",
        "    # several); a request carrying it goes to that instance first.",
        "    map $upstream_addr $paas_upstream_instance {",
        '        default "";',
        *(f'        "{a}" {g};' for a, g in sorted(by_address.items())),
        "    }",
        "    map "
        + '"'
        + "".join(f"$upstream_cookie_{n}" for n in cookie_names)
        + '"'
        + " $paas_sticky_instance {",
        '        "" "";',
        "        default $paas_upstream_instance;",
        "    }",
    ]
    for path in sorted(paths):
        out += [
            f"    map $paas_sticky_instance {_cookie_variable(path)} {{",
            '        "" "";',
            f'        default "{cookie}=$paas_sticky_instance; Path={path or "/"}; HttpOnly";',
            "    }",
        ]
    for pool in sticky:
        out += [
            f"    map $cookie_{cookie} {_pick_variable(pool.app_guid, pool.balance)} {{",
            f"        default {pool.name};",
            *(
                f"        {i.guid} {_instance_upstream(pool.app_guid, pool.balance, i.guid)};"
                for i in pool.instances
            ),
            "    }",
        ]
    return out


def idle_connections(instances: int) -> int:
    """Idle keep-alive connections each nginx worker keeps to one upstream of ``instances``.

    More requests in flight to an app than a worker keeps idle means a connection closed
    after each answer and a new one opened for the next: 32 (and 50 clients) made a worker
    reconnect to the app hundreds of times a second. Idle ones close after
    ``UPSTREAM_KEEPALIVE_TIMEOUT``, so a large number costs an app nothing once load drops."""
    return min(IDLE_CONNECTIONS_MAX, max(IDLE_CONNECTIONS_MIN, 16 * instances))


def _upstreams(pool: _Pool) -> list[str]:
    keepalive = [
        f"        keepalive {idle_connections(len(pool.instances))};",
        f"        keepalive_timeout {UPSTREAM_KEEPALIVE_TIMEOUT};",
        "    }",
    ]
    out = ["", f"    upstream {pool.name} {{"]
    if pool.app_names:
        out.append(f"        # app: {', '.join(pool.app_names)}")
    if pool.balance == LEAST_CONNECTIONS:
        # Shared memory: each worker counts the connections of all workers, not its own.
        out += ["        least_conn;", f"        zone {pool.name} 64k;"]
    out += [f"        server {i.address};" for i in pool.instances]
    out += keepalive
    if pool.sticky:
        for inst in pool.instances:
            out += [
                f"    upstream {_instance_upstream(pool.app_guid, pool.balance, inst.guid)} {{",
                f"        # instance {inst.guid}",
            ]
            out += [
                f"        server {i.address}{'' if i is inst else ' backup'};"
                for i in pool.instances
            ]
            out += keepalive
    return out


def _location_heads(path: str) -> list[str]:
    if not path:
        return ["location /"]
    return [f"location = {path}", f"location {path}/"]


def _route_locations(
    route: MappedRoute, n: int, pool: _Pool | None, redirect_to: str | None, retired: str
) -> list[str]:
    """The locations of one route in one server (``n``: its number within the server;
    ``retired``: the quoted path whose existence means this config is being replaced)."""
    comment = f"            # route {route.guid}"
    if _APP_NAME_RE.fullmatch(route.app_name if isinstance(route.app_name, str) else ""):
        comment += f": app {route.app_name}"
    out: list[str] = []
    if redirect_to is not None:
        for head in _location_heads(route.path):
            out += [
                f"        {head} {{",
                comment,
                f"            return 308 {redirect_to}$request_uri;",
                "        }",
            ]
        return out
    if pool is None:
        for head in _location_heads(route.path):
            out += [
                f"        {head} {{",
                comment,
                "            error_page 503 $paas_no_instances_page;",
                "            return 503;",
                "        }",
            ]
        return out
    errors = [
        "            error_page 502 504 =503 $paas_backend_unavailable_page;",
        "            error_page 413 $paas_body_too_large_page;",
    ]
    answer = ["            add_header X-Request-Id $paas_request_id always;"]
    if pool.sticky:
        answer.append(f"            add_header Set-Cookie {_cookie_variable(route.path)} always;")
    picked = f"http://{_pick_variable(pool.app_guid, pool.balance)}" if pool.sticky else None
    stream, pinned = f"@paas_stream_{n}", f"@paas_sticky_{n}"
    closing = f"@paas_closing_{n}"
    for head in _location_heads(route.path):
        out += [
            f"        {head} {{",
            comment,
            f"            error_page 418 = {stream};",
            *([f"            error_page 419 = {pinned};"] if pool.sticky else []),
            f"            error_page 420 = {closing};",
            "            if ($paas_stream) { return 418; }",
            f"            if (-f {retired}) {{ return 420; }}",
            *(
                [f"            if ($cookie_{INSTANCE_COOKIE}) {{ return 419; }}"]
                if pool.sticky
                else []
            ),
            f"            proxy_pass http://{pool.name};",
            *answer,
            "            recursive_error_pages on;  # a named location's 502 gets the page",
            *errors,
            "        }",
        ]
    out += [
        f"        location {stream} {{",
        f"            proxy_pass {picked or f'http://{pool.name}'};",
        "            proxy_set_header Connection $paas_connection;",
        "            proxy_set_header Upgrade $http_upgrade;",
        *(f"            {h}" for h in _PROXY_HEADERS),
        "            proxy_buffering off;",
        f"            proxy_read_timeout {STREAM_TIMEOUT};",
        f"            proxy_send_timeout {STREAM_TIMEOUT};",
        *answer,
        "            recursive_error_pages on;",
        *errors,
        "        }",
    ]
    out += [
        # While this config is being replaced, every answer says "Connection: close", so no
        # keep-alive connection is idle when nginx retires this config's workers (they close
        # idle ones at once, racing a request the client may be sending on it).
        f"        location {closing} {{",
        "            keepalive_timeout 0;",
        f"            proxy_pass {picked or f'http://{pool.name}'};",
        *answer,
        "            recursive_error_pages on;",
        *errors,
        "        }",
    ]
    if picked:
        out += [
            f"        location {pinned} {{",
            f"            proxy_pass {picked};",
            *answer,
            "            recursive_error_pages on;",
            *errors,
            "        }",
        ]
    return out


def _redirect_target(https_port: int) -> str:
    return "https://$host" if https_port == 443 else f"https://$host:{https_port}"


def render_nginx_config(
    routes: Iterable[MappedRoute],
    backends: Iterable[Backend],
    *,
    listen_host: str,
    listen_port: int,
    runtime_dir: str,
    https_port: int = 0,
    certificates: Mapping[str, tuple[str, str]] | None = None,
    access_log_path: str | None = None,
    max_body_mb: int = 100,
    sticky_cookies: Iterable[str] = ("JSESSIONID",),
    retired_dir: str | None = None,
) -> str:
    """A complete nginx.conf (nginx >= 1.19.4) for ``routes`` joined with ``backends``.

    ``certificates`` maps a domain to the paths of its certificate chain and key; a route
    under that domain is also served on ``https_port`` (0: no HTTPS). Unknown hosts get a 404
    page, a route whose app has no instance or whose instances all fail a 503 page (JSON for
    clients that accept JSON), each with an ``X-Paas-Router-Error`` header. Invalid routes and
    backends are skipped (see :func:`usable_routes`, :func:`backend_problem`). With
    ``access_log_path``, nginx appends an access line per request to that file (see
    :mod:`router.accesslog`).
    """
    listen = _listen_address(listen_host, listen_port)
    if https_port:
        https_listen = _listen_address(listen_host, https_port)
        if https_port == listen_port:
            raise ValueError(f"the HTTPS port {https_port} is also the HTTP port")
    rt = runtime_dir.rstrip("/") or "/"
    _quote_path(rt)
    certs = {}
    for domain, (cert, key) in (certificates or {}).items():
        name = normalize_domain(domain)
        if name is not None:
            certs[name] = (
                _quote_path(cert, "certificate path"),
                _quote_path(key, "certificate key path"),
            )
    cookie_names = _sticky_cookie_names(sticky_cookies)

    served, _problems = usable_routes(routes)
    instances = _instances_by_app(backends)
    pools: dict[tuple[str, str], _Pool] = {}
    for route in served:
        key = (route.app_guid, route.balance)
        if key in pools or not instances.get(route.app_guid):
            continue
        names = {
            r.app_name
            for r in served
            if r.app_guid == route.app_guid
            and isinstance(r.app_name, str)
            and _APP_NAME_RE.fullmatch(r.app_name)
        }
        pools[key] = _Pool(
            route.app_guid, route.balance, tuple(sorted(names)), tuple(instances[route.app_guid])
        )
    by_host: dict[str, list[MappedRoute]] = {}
    for route in served:
        by_host.setdefault(normalize_host(route.host) or "", []).append(route)

    def host_cert(host_routes: list[MappedRoute]) -> tuple[str, str] | None:
        if not https_port:
            return None
        domains = {normalize_domain(r.domain) for r in host_routes} - {None}
        found = [d for d in domains if d in certs]
        return certs[max(found, key=lambda d: (len(d), d))] if found else None  # type: ignore[index]

    tls_hosts = {h: c for h, rs in by_host.items() if (c := host_cert(rs)) is not None}
    sticky_paths = {
        r.path for r in served if (p := pools.get((r.app_guid, r.balance))) is not None and p.sticky
    }
    ordered_pools = [pools[k] for k in sorted(pools)]
    n_backends = len({(p.app_guid, i.address) for p in ordered_pools for i in p.instances})
    n_maps = sum(len(p.instances) for p in ordered_pools) + len(ordered_pools) + len(sticky_paths)

    def path(name: str) -> str:
        return _quote_path(f"{rt}/{name}" if rt != "/" else f"/{name}")

    retired_marker = _quote_path(f"{retired_dir or _retired_dir(rt)}/{_GENERATION_SLOT}",
                                 "retired_dir")
    out: list[str] = [
        "# Generated by paas-router from the route table. Do not edit: it is rewritten.",
        f"# generation: {_GENERATION_SLOT}",
        f"# hosts: {len(by_host)}, routes: {len(served)}, backends: {n_backends}",
        "",
        "daemon off;",
        "master_process on;",
        "worker_processes auto;",
        f"worker_shutdown_timeout {WORKER_SHUTDOWN_TIMEOUT};",
        "pcre_jit on;  # the maps' regexes run on every request",
        f"pid {path('nginx.pid')};",
        f"error_log {path('error.log')} warn;",
        "",
        "events {",
        # Not multi_accept: one worker would take a whole burst of new connections (a
        # benchmark's, a browser's) and leave the other cores idle.
        "    worker_connections 4096;",
        "}",
        "",
        "http {",
        *_http_context(
            rt=rt,
            access_log_path=access_log_path,
            max_body_mb=max_body_mb,
            hosts=list(by_host),
            tls=bool(https_port),
            maps=n_maps,
        ),
        *_sticky_maps(ordered_pools, cookie_names, sticky_paths),
        "",
        "    # Unknown hosts.",
        "    server {",
        f"        listen {listen} default_server;",
        "        server_name _;",
        *(["        access_log off;"] if access_log_path is not None else []),
        "        location / {",
        "            error_page 404 $paas_unknown_route_page;",
        "            return 404;",
        "        }",
        *_page_locations(["unknown_route"]),
        "    }",
    ]
    if https_port:
        out += [
            "    server {",
            # HTTP/2 for browsers (ALPN; HTTP/1.1 clients keep HTTP/1.1), whose reloads
            # end with a GOAWAY that clients obey rather than a closed connection.
            f"        listen {https_listen} ssl http2 default_server;",
            "        server_name _;",
            "        ssl_reject_handshake on;  # no certificate for this name",
            "    }",
        ]
    for pool in ordered_pools:
        out += _upstreams(pool)
    for host in sorted(by_host):
        host_routes = by_host[host]
        cert = tls_hosts.get(host)
        schemes = [("http", listen)] + ([("https", https_listen)] if cert else [])
        for scheme, address in schemes:
            out += [
                "",
                "    server {",
                f"        listen {address}{' ssl http2' if scheme == 'https' else ''};",
                f"        server_name {host};",
            ]
            if scheme == "https" and cert:
                out += [
                    f"        ssl_certificate {cert[0]};",
                    f"        ssl_certificate_key {cert[1]};",
                ]
            for n, route in enumerate(host_routes):
                redirect = (
                    _redirect_target(https_port)
                    if scheme == "http" and cert and route.https_redirect
                    else None
                )
                out += _route_locations(
                    route, n, pools.get((route.app_guid, route.balance)), redirect,
                    retired_marker,
                )
            if all(r.path for r in host_routes):
                out += [
                    "        location / {",
                    "            error_page 404 $paas_unknown_route_page;",
                    "            return 404;",
                    "        }",
                ]
            out += _page_locations(_PAGES)
            out += ["    }"]
    out += ["}", ""]
    text = "\n".join(out)
    # The generation names this text (the same input gives the same name), so the marker
    # file that retires it is its own: see retired_marker().
    generation = hashlib.sha256(text.encode()).hexdigest()[:16]
    return text.replace(_GENERATION_SLOT, generation)


RETIRED_DIR = "retired"
_GENERATION_SLOT = "@@generation@@"
_GENERATION_RE = re.compile(r"^# generation: ([0-9a-f]{16})$", re.MULTILINE)


def _retired_dir(rt: str) -> str:
    return f"{rt}/{RETIRED_DIR}" if rt != "/" else f"/{RETIRED_DIR}"


def retired_marker(config_text: str, retired_dir: str) -> str | None:
    """The file in ``retired_dir`` whose existence tells the workers of ``config_text`` to
    close every keep-alive connection after its next answer (None for a text without a
    generation). nginx's workers (``nobody`` when nginx starts as root) must be able to
    reach the folder."""
    m = _GENERATION_RE.search(config_text)
    if m is None:
        return None
    return f"{retired_dir.rstrip('/')}/{m[1]}"
