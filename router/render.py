"""Turn a route table into a complete nginx.conf. Pure: no I/O, and the same routes in any
order give the same text, so the caller can compare strings to decide whether to reload.

Only routes whose host is a DNS name and whose backend is ``ip:port`` reach the config (see
:func:`route_problem`); nothing else from a route is written, so no route can inject config.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from contracts.messages import Route

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_BACKEND_V4_RE = re.compile(r"([0-9.]{7,15}):([0-9]{1,5})")
_BACKEND_V6_RE = re.compile(r"\[([0-9a-fA-F:.]{2,45})\]:([0-9]{1,5})")
_APP_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
# Characters that could end a quoted nginx string or start a variable.
_UNSAFE_IN_QUOTES = re.compile(r'["\\$\x00-\x1f\x7f]')

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address

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

# One access line per proxied request, tab-separated. nginx escapes '"', '\\', bytes below 32
# and above 126 in variables as \\xXX, so a tab in the format always separates fields.
ACCESS_LOG_FIELDS = (
    "$msec", "$request_method", "$request_uri", "$status", "$body_bytes_sent", "$request_time",
    "$upstream_addr", "$paas_request_id", "$host",
)
ACCESS_LOG_TAG = "paas"
# How long an idle upstream connection is kept. Shorter than the app servers' own keep-alive
# (gunicorn 2 s, Node and uvicorn 5 s), so nginx closes an idle connection before the app
# does and never sends a request on one the app is closing (a 502).
UPSTREAM_KEEPALIVE_TIMEOUT = "1s"


def normalize_host(host: object) -> str | None:
    """The lower-cased host if it is a DNS name (labels of letters, digits, hyphens), else None."""
    if not isinstance(host, str) or not 0 < len(host) <= 253:
        return None
    host = host.lower()
    return host if _HOST_RE.fullmatch(host) else None


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


def route_problem(route: Route) -> str | None:
    """Why ``route`` cannot be routed (a sentence fragment), or None if it is fine."""
    if normalize_host(route.host) is None:
        return f"host {route.host!r} is not a DNS name"
    if parse_backend(route.backend) is None:
        return f"backend {route.backend!r} is not ip:port"
    return None


def upstream_name(host: str) -> str:
    """A safe, unique nginx upstream name for ``host``: readable slug plus a short hash."""
    slug = re.sub(r"[^a-z0-9]+", "_", host.lower())[:40].strip("_")
    digest = hashlib.sha256(host.lower().encode()).hexdigest()[:10]
    return f"app_{slug}_{digest}"


@dataclass
class _Host:
    backends: set[tuple[_IP, int]] = field(default_factory=set)
    app_names: set[str] = field(default_factory=set)


def _format_backend(ip: _IP, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _backend_key(backend: tuple[_IP, int]) -> tuple[int, int, int]:
    ip, port = backend
    return (ip.version, int(ip), port)


def _listen_address(host: str, port: int) -> str:
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"listen port {port!r} is not a TCP port")
    if host == "*":
        return f"*:{port}"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if normalize_host(host) is None:
            raise ValueError(f"listen host {host!r} is not an IP address or DNS name") from None
        return f"{host}:{port}"
    return _format_backend(ip, port)


def _quote_path(path: str) -> str:
    if not path or _UNSAFE_IN_QUOTES.search(path):
        raise ValueError(f"runtime_dir {path!r} is empty or holds quotes, '$' or control chars")
    return f'"{path}"'


def _group(routes: Iterable[Route]) -> dict[str, _Host]:
    hosts: dict[str, _Host] = {}
    for route in routes:
        host = normalize_host(route.host)
        backend = parse_backend(route.backend)
        if host is None or backend is None:
            continue
        entry = hosts.setdefault(host, _Host())
        entry.backends.add(backend)
        if isinstance(route.app_name, str) and _APP_NAME_RE.fullmatch(route.app_name):
            entry.app_names.add(route.app_name)
    return hosts


def _hash_sizes(hosts: Iterable[str]) -> tuple[int, int]:
    """``server_names_hash`` bucket and max size that fit these hosts (and grow only with them)."""
    names = list(hosts)
    bucket = 128
    while bucket < max(map(len, names), default=0) + 32:  # entry: name + pointer + padding
        bucket *= 2
    size = 512
    while size < 4 * len(names):
        size *= 2
    return bucket, size


def _access_log(port: int | None) -> list[str]:
    if port is None:
        return ["    access_log off;"]
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"access log port {port!r} is not a UDP port")
    fmt = "\\t".join(ACCESS_LOG_FIELDS)
    return [
        "    # Access lines go to the router over syslog (UDP, loopback); it adds them to the",
        "    # app's log stream as RTR lines.",
        f"    log_format paas_rtr '{fmt}';",
        f"    access_log syslog:server=127.0.0.1:{port},tag={ACCESS_LOG_TAG},nohostname paas_rtr;",
    ]


def _body_limit(max_body_mb: int) -> str:
    if not isinstance(max_body_mb, int) or isinstance(max_body_mb, bool) or \
            not 0 < max_body_mb <= 1024 * 1024:
        raise ValueError(f"max body size {max_body_mb!r} MB is not from 1 MB to 1 TB")
    return f"{max_body_mb}m"


def render_nginx_config(
    routes: Iterable[Route],
    *,
    listen_host: str,
    listen_port: int,
    runtime_dir: str,
    access_log_port: int | None = None,
    max_body_mb: int = 100,
) -> str:
    """A complete nginx.conf (nginx >= 1.22) routing each host to all its backends.

    Unknown hosts get a 404 page, a host whose backends all fail gets a 503 page (JSON for
    clients that accept JSON); both carry an ``X-Paas-Router-Error`` header. Invalid routes
    are skipped (see :func:`route_problem`). With ``access_log_port``, nginx sends an access
    line per proxied request to that UDP port on 127.0.0.1 (see :mod:`router.accesslog`).
    """
    listen = _listen_address(listen_host, listen_port)
    rt = runtime_dir.rstrip("/") or "/"

    def path(name: str) -> str:
        return _quote_path(f"{rt}/{name}" if rt != "/" else f"/{name}")

    hosts = _group(routes)
    n_backends = sum(len(h.backends) for h in hosts.values())
    bucket_size, max_size = _hash_sizes(hosts)
    out: list[str] = [
        "# Generated by paas-router from the route table. Do not edit: it is rewritten.",
        f"# hosts: {len(hosts)}, backends: {n_backends}",
        "",
        "daemon off;",
        "master_process on;",
        "worker_processes 1;",
        f"pid {path('nginx.pid')};",
        f"error_log {path('error.log')} warn;",
        "",
        "events {",
        "    worker_connections 1024;",
        "}",
        "",
        "http {",
        *_access_log(access_log_port),
        "    server_tokens off;",
        "    default_type application/octet-stream;",
        f"    client_max_body_size {_body_limit(max_body_mb)};",
        f'    map "" $paas_max_body {{ default "{max_body_mb} MB"; }}',
        f"    client_body_temp_path {path('client_body_temp')};",
        f"    proxy_temp_path {path('proxy_temp')};",
        f"    fastcgi_temp_path {path('fastcgi_temp')};",
        f"    uwsgi_temp_path {path('uwsgi_temp')};",
        f"    scgi_temp_path {path('scgi_temp')};",
        f"    server_names_hash_bucket_size {bucket_size};",
        f"    server_names_hash_max_size {max_size};",
        "",
        "    # Keep upstream connections alive, but pass WebSocket upgrades through.",
        "    map $http_upgrade $paas_connection {",
        "        default upgrade;",
        '        "" "";',
        "    }",
        "",
        "    # The client's X-Request-Id if it is a plain token, else a new one.",
        "    map $http_x_request_id $paas_request_id {",
        '        "~^[A-Za-z0-9._-]{1,200}$" $http_x_request_id;',
        "        default $request_id;",
        "    }",
        "",
        "    # X-Request-Start: t=<milliseconds since the epoch>, as gorouter and Heroku send it.",
        "    map $msec $paas_request_start {",
        '        "~^(?<paas_s>[0-9]+)\\.(?<paas_ms>[0-9]+)$" "t=$paas_s$paas_ms";',
        '        default "";',
        "    }",
        "",
        "    # Error pages in JSON for clients that accept JSON.",
        "    map $http_accept $paas_not_found_page {",
        '        "~*application/json" @paas_not_found_json;',
        "        default @paas_not_found;",
        "    }",
        "    map $http_accept $paas_too_large_page {",
        '        "~*application/json" @paas_too_large_json;',
        "        default @paas_too_large;",
        "    }",
        "    map $http_accept $paas_unavailable_page {",
        '        "~*application/json" @paas_unavailable_json;',
        "        default @paas_unavailable;",
        "    }",
        "",
        "    # The host as shown on error pages: echoed only if it looks like a DNS name.",
        "    map $host $paas_safe_host {",
        '        "~^[a-z0-9.-]{1,253}$" $host;',
        '        default "this host";',
        "    }",
        "",
        "    server {",
        f"        listen {listen} default_server;",
        "        server_name _;",
        *(["        access_log off;"] if access_log_port is not None else []),
        "        add_header X-Paas-Router-Error unknown_route always;",
        "        add_header X-Request-Id $paas_request_id always;",
        "        location / {",
        "            error_page 404 $paas_not_found_page;",
        "            return 404;",
        "        }",
        "        location @paas_not_found {",
        "            default_type text/html;",
        f'            return 404 "{NOT_FOUND_PAGE}";',
        "        }",
        "        location @paas_not_found_json {",
        "            default_type application/json;",
        f"            return 404 '{NOT_FOUND_JSON}';",
        "        }",
        "    }",
    ]
    for host in sorted(hosts):
        out += _host_blocks(host, hosts[host], listen)
    out += ["}", ""]
    return "\n".join(out)


def _host_blocks(host: str, entry: _Host, listen: str) -> list[str]:
    name = upstream_name(host)
    lines = ["", f"    upstream {name} {{"]
    if entry.app_names:
        lines.append(f"        # app: {', '.join(sorted(entry.app_names))}")
    for backend in sorted(entry.backends, key=_backend_key):
        lines.append(f"        server {_format_backend(*backend)};")
    lines += [
        "        keepalive 32;",
        f"        keepalive_timeout {UPSTREAM_KEEPALIVE_TIMEOUT};",
        "    }",
        "",
        "    server {",
        f"        listen {listen};",
        f"        server_name {host};",
        "        location / {",
        f"            proxy_pass http://{name};",
        "            proxy_http_version 1.1;",
        "            proxy_set_header Host $host;",
        "            proxy_set_header Connection $paas_connection;",
        "            proxy_set_header Upgrade $http_upgrade;",
        "            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "            proxy_set_header X-Forwarded-Proto $scheme;",
        "            proxy_set_header X-Forwarded-Host $host;",
        "            proxy_set_header X-Request-Id $paas_request_id;",
        "            proxy_set_header X-Request-Start $paas_request_start;",
        # Hop-by-hop headers nginx would pass on (it drops TE, Keep-Alive, Expect itself).
        '            proxy_set_header Proxy-Connection "";',
        '            proxy_set_header Proxy-Authorization "";',
        '            proxy_set_header Trailer "";',
        "            proxy_hide_header X-Request-Id;",
        "            add_header X-Request-Id $paas_request_id always;",
        "            proxy_connect_timeout 2s;",
        "            proxy_next_upstream error timeout;",
        "            error_page 502 504 =503 $paas_unavailable_page;",
        "            error_page 413 $paas_too_large_page;",
        "        }",
        "        location @paas_too_large {",
        "            default_type text/html;",
        "            add_header X-Paas-Router-Error body_too_large always;",
        "            add_header X-Request-Id $paas_request_id always;",
        f'            return 413 "{TOO_LARGE_PAGE}";',
        "        }",
        "        location @paas_too_large_json {",
        "            default_type application/json;",
        "            add_header X-Paas-Router-Error body_too_large always;",
        "            add_header X-Request-Id $paas_request_id always;",
        f"            return 413 '{TOO_LARGE_JSON}';",
        "        }",
        "        location @paas_unavailable {",
        "            default_type text/html;",
        "            add_header X-Paas-Router-Error backend_unavailable always;",
        "            add_header X-Request-Id $paas_request_id always;",
        f'            return 503 "{UNAVAILABLE_PAGE}";',
        "        }",
        "        location @paas_unavailable_json {",
        "            default_type application/json;",
        "            add_header X-Paas-Router-Error backend_unavailable always;",
        "            add_header X-Request-Id $paas_request_id always;",
        f"            return 503 '{UNAVAILABLE_JSON}';",
        "        }",
        "    }",
    ]
    return lines
