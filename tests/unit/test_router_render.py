"""render_nginx_config: the route table and backends as nginx sees them.

Snapshot tests (one per feature) compare the whole text with
``tests/unit/snapshots/router/<scenario>.conf``; after a deliberate change, regenerate them with
``PAAS_UPDATE_SNAPSHOTS=1`` and review the diff. Every snapshot must also pass the real
``nginx -t``. Smaller tests pin the behaviour a user relies on.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from contracts.messages import Backend
from contracts.routing import LEAST_CONNECTIONS, MappedRoute
from router.render import (
    backend_problem,
    idle_connections,
    normalize_host,
    parse_backend,
    render_nginx_config,
    route_problem,
    upstream_name,
    usable_routes,
    valid_path,
)

SNAPSHOTS = Path(__file__).parent / "snapshots" / "router"
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")

RT = "/run/paas/router"
CERT_DOMAIN = "example.com"
CERTS = {CERT_DOMAIN: (f"{RT}/certs/example.pem", f"{RT}/certs/example.key")}


def route(host: str, app: str, path: str = "", **kw: Any) -> MappedRoute:
    domain = kw.pop("domain", host.removeprefix("*.").split(".", 1)[-1])
    where = hashlib.sha256(f"{host}{path}".encode()).hexdigest()[:8]
    return MappedRoute(guid=f"route-{app}-{where}",
                       host=host, domain=domain, app_guid=f"guid-{app}", app_name=app,
                       path=path, **kw)


def backend(app: str, port: int, index: int = 0, ip: str = "127.0.0.1") -> Backend:
    address = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    return Backend(backend=address, app_guid=f"guid-{app}", app_name=app,
                   instance_guid=f"inst-{app}-{index}", index=index)


Scenario = tuple[list[MappedRoute], list[Backend], dict[str, Any]]


def empty() -> Scenario:
    return [], [], {}


def one_app() -> Scenario:
    return [route("myapp.localhost", "myapp")], [backend("myapp", 61001)], {}


def round_robin_three_instances() -> Scenario:
    """Three instances: round-robin upstream, and sticky-session machinery (>= 2)."""
    return ([route("web.localhost", "web")],
            [backend("web", 61001, 0), backend("web", 61002, 1), backend("web", 61003, 2)], {})


def several_routes_per_app() -> Scenario:
    return ([route("shop.localhost", "shop"), route("www.shop.example.com", "shop"),
             route("shop.example.com", "shop", "/store")],
            [backend("shop", 61001)], {})


def wildcard_and_exact_hosts() -> Scenario:
    return ([route("*.apps.example.com", "catchall"), route("special.apps.example.com", "special")],
            [backend("catchall", 61001), backend("special", 61002)], {})


def path_routes() -> Scenario:
    """Longest prefix: ``""``, ``/api`` and ``/api/v2`` on one host; only paths on another."""
    return ([route("site.localhost", "front"), route("site.localhost", "api", "/api"),
             route("site.localhost", "apiv2", "/api/v2"),
             route("paths.localhost", "docs", "/docs")],
            [backend("front", 61001), backend("api", 61002), backend("apiv2", 61003),
             backend("docs", 61004)], {})


def no_instances() -> Scenario:
    return [route("down.localhost", "down")], [], {}


def least_connections() -> Scenario:
    return ([route("lc.localhost", "lc", balance=LEAST_CONNECTIONS),
             route("rr.localhost", "lc")],
            [backend("lc", 61001, 0), backend("lc", 61002, 1)], {})


def sticky_cookies() -> Scenario:
    return ([route("sticky.localhost", "sticky"), route("sticky.localhost", "sticky", "/cart")],
            [backend("sticky", 61001, 0), backend("sticky", 61002, 1)],
            {"sticky_cookies": ("JSESSIONID", "SESSION")})


def tls_and_redirect() -> Scenario:
    """HTTPS for routes under example.com; one redirects plain HTTP; localhost has no cert."""
    return ([route("www.example.com", "www"), route("secure.example.com", "sec",
                                                    https_redirect=True),
             route("*.apps.example.com", "wild", domain="apps.example.com"),
             route("plain.localhost", "www", https_redirect=True)],
            [backend("www", 61001), backend("sec", 61002), backend("wild", 61003)],
            {"https_port": 8443, "certificates": {**CERTS, "apps.example.com": CERTS[CERT_DOMAIN]}})


def tls_on_443() -> Scenario:
    return ([route("secure.example.com", "sec", https_redirect=True)], [backend("sec", 61002)],
            {"https_port": 443, "listen_port": 80, "certificates": CERTS})


def access_log_and_body_limit() -> Scenario:
    return ([route("myapp.localhost", "myapp")], [backend("myapp", 61001)],
            {"access_log_path": f"{RT}/access.log", "max_body_mb": 5})


def ipv6() -> Scenario:
    return ([route("v6.localhost", "v6")], [backend("v6", 8000, ip="::1")],
            {"listen_host": "::1"})


SCENARIOS: dict[str, Callable[[], Scenario]] = {
    f.__name__: f
    for f in (empty, one_app, round_robin_three_instances, several_routes_per_app,
              wildcard_and_exact_hosts, path_routes, no_instances, least_connections,
              sticky_cookies, tls_and_redirect, tls_on_443, access_log_and_body_limit, ipv6)
}


def render_args(overrides: dict[str, Any]) -> dict[str, Any]:
    args: dict[str, Any] = {"listen_host": "127.0.0.1", "listen_port": 8080, "runtime_dir": RT}
    args.update(overrides)
    return args


def render_scenario(name: str) -> str:
    routes, backends, overrides = SCENARIOS[name]()
    return render_nginx_config(routes, backends, **render_args(overrides))


def render(routes: list[MappedRoute], backends: list[Backend], **kw: Any) -> str:
    return render_nginx_config(routes, backends, **render_args(kw))


# -- snapshots --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_snapshot(name: str) -> None:
    text = render_scenario(name)
    path = SNAPSHOTS / f"{name}.conf"
    if os.environ.get("PAAS_UPDATE_SNAPSHOTS") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if not path.exists():
        pytest.fail(f"snapshot {path} is missing: run the test with PAAS_UPDATE_SNAPSHOTS=1 to "
                    "write it, then review it", pytrace=False)
    assert text == path.read_text(), (
        f"the config differs from {path}; if the change is intended, regenerate the snapshots "
        "with PAAS_UPDATE_SNAPSHOTS=1 and review the diff")


def test_no_snapshot_is_left_without_its_scenario() -> None:
    assert {p.stem for p in SNAPSHOTS.glob("*.conf")} <= set(SCENARIOS)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("cert")
    cert, key = folder / "example.pem", folder / "example.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", f"/CN={CERT_DOMAIN}",
         "-addext", f"subjectAltName=DNS:{CERT_DOMAIN},DNS:*.{CERT_DOMAIN}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    return cert.read_text(), key.read_text()


def nginx_t(text: str, folder: Path, certificate: tuple[str, str]) -> subprocess.CompletedProcess:
    """``nginx -t`` on ``text`` with ``RT`` moved to ``folder`` (certificates written there)."""
    (folder / "certs").mkdir(parents=True, exist_ok=True)
    (folder / "certs" / "example.pem").write_text(certificate[0])
    (folder / "certs" / "example.key").write_text(certificate[1])
    config = folder / "nginx.conf"
    config.write_text(text.replace(RT, str(folder)))
    return subprocess.run([NGINX or "nginx", "-t", "-q", "-c", str(config), "-p", f"{folder}/",
                           "-e", str(folder / "error.log")],
                          capture_output=True, text=True, timeout=30, check=False)


@needs_nginx
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_snapshot_passes_nginx_t(name: str, tmp_path: Path, certificate: tuple[str, str]) -> None:
    done = nginx_t(render_scenario(name), tmp_path, certificate)
    assert done.returncode == 0, done.stderr


@needs_nginx
def test_a_large_table_passes_nginx_t(tmp_path: Path, certificate: tuple[str, str]) -> None:
    routes = [route(f"app{i}.localhost", f"app{i}") for i in range(500)]
    routes += [route(f"app{i}.example.com", f"app{i}", "/p/q") for i in range(0, 500, 5)]
    backends = [backend(f"app{i}", 20000 + 3 * i + k, k) for i in range(500) for k in range(3)]
    text = render(routes, backends, https_port=8443, certificates=CERTS)
    assert nginx_t(text, tmp_path, certificate).returncode == 0


# -- what the snapshots mean ------------------------------------------------------------------


def section(text: str, start: str) -> str:
    """The block that opens with the line containing ``start`` (up to its closing brace)."""
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if start in line)
    indent = len(lines[first]) - len(lines[first].lstrip())
    for i in range(first + 1, len(lines)):
        if lines[i].strip() == "}" and len(lines[i]) - len(lines[i].lstrip()) == indent:
            return "\n".join(lines[first:i + 1])
    raise AssertionError(f"block {start!r} does not close")


def test_main_context_is_foreground_with_everything_under_runtime_dir() -> None:
    text = render_scenario("empty")
    head = text.split("http {")[0]
    assert "daemon off;\nmaster_process on;\nworker_processes auto;\n" in head
    assert f'pid "{RT}/nginx.pid";' in head
    assert f'error_log "{RT}/error.log" warn;' in head
    assert "worker_connections 4096;" in head and "multi_accept" not in head
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        assert f'    {kind}_temp_path "{RT}/{kind}_temp";' in text
    assert "    access_log off;" in text
    assert text.endswith("}\n")
    assert text.count("{") == text.count("}")


def test_workers_keep_more_idle_connections_to_apps_with_more_instances() -> None:
    assert idle_connections(1) == 64  # more than a busy client pool's connections
    assert idle_connections(8) == 128
    assert idle_connections(1000) == 1024


def test_the_common_request_is_proxied_from_the_route_location() -> None:
    text = render_scenario("one_app")
    name = upstream_name("guid-myapp", "round-robin")
    assert section(text, f"upstream {name} {{") == (
        f"    upstream {name} {{\n"
        "        # app: myapp\n"
        "        server 127.0.0.1:61001;\n"
        "        keepalive 64;\n"
        "        keepalive_timeout 1s;\n"
        "    }")
    location = section(text.split("server_name myapp.localhost;")[1], "location / {")
    assert f"proxy_pass http://{name};" in location
    assert "if ($paas_stream) { return 418; }" in location  # the one branch: no regex
    assert "__PAAS_INSTANCE" not in text  # one instance: no sticky machinery
    # Headers for the app, set once for every location.
    http = text.split("    # Unknown hosts.")[0]
    for header in ("Host $host", "X-Forwarded-For $proxy_add_x_forwarded_for",
                   "X-Forwarded-Proto $scheme", "X-Forwarded-Host $host",
                   "X-Request-Id $paas_request_id", "X-Request-Start $paas_request_start",
                   'Connection ""', 'Proxy-Connection ""', 'Proxy-Authorization ""',
                   'Trailer ""'):
        assert f"    proxy_set_header {header};" in http
    assert "    proxy_next_upstream error timeout;" in http
    assert "    proxy_next_upstream_tries 3;" in http


def test_streams_go_unbuffered_with_long_timeouts_and_upgrade_headers() -> None:
    text = render_scenario("one_app")
    assert section(text, "map $http_upgrade $paas_stream {") == (
        "    map $http_upgrade $paas_stream {\n"
        '        "" $paas_event_stream;\n'
        "        default 1;\n"
        "    }")
    assert '        "text/event-stream" 1;' in section(text, "map $http_accept $paas_event_stream")
    stream = section(text, "location @paas_stream_0 {")
    for line in ("proxy_buffering off;", "proxy_read_timeout 900s;", "proxy_send_timeout 900s;",
                 "proxy_set_header Connection $paas_connection;",
                 "proxy_set_header Upgrade $http_upgrade;",
                 "proxy_set_header X-Request-Id $paas_request_id;"):
        assert line in stream


def test_several_backends_share_one_upstream_sorted_numerically() -> None:
    backends = [backend("a", 61010, 1), backend("a", 61009, 2), backend("a", 80, 3, "10.0.0.10"),
                backend("a", 80, 4, "10.0.0.9"), backend("a", 61009, 5)]  # same address twice
    text = render([route("a.localhost", "a")], backends)
    upstream = section(text, f"upstream {upstream_name('guid-a', 'round-robin')} {{")
    servers = [line.strip() for line in upstream.splitlines() if "server " in line]
    assert servers == ["server 10.0.0.9:80;", "server 10.0.0.10:80;", "server 127.0.0.1:61009;",
                       "server 127.0.0.1:61010;"]
    assert "# hosts: 1, routes: 1, backends: 4" in text


def test_each_app_and_balancing_has_one_upstream() -> None:
    text = render_scenario("least_connections")
    rr, lc = upstream_name("guid-lc", "round-robin"), upstream_name("guid-lc", LEAST_CONNECTIONS)
    assert "least_conn;" in section(text, f"upstream {lc} {{")
    assert f"zone {lc} 64k;" in section(text, f"upstream {lc} {{")
    assert "least_conn;" not in section(text, f"upstream {rr} {{")
    assert text.count("    upstream app_") == 2
    text = render_scenario("several_routes_per_app")
    assert text.count("    upstream app_") == 1
    # Two "" routes (one location each), one /store (two); each route has a stream and a
    # closing location.
    assert text.count(f"proxy_pass http://{upstream_name('guid-shop', 'round-robin')};") == 10


def test_path_routes_match_the_path_and_below_it_only() -> None:
    text = render_scenario("path_routes")
    site = text.split("server_name site.localhost;")[1]
    for path in ("/api", "/api/v2"):
        assert f"        location = {path} {{" in site
        assert f"        location {path}/ {{" in site
    assert "        location / {" in site
    docs = text.split("server_name paths.localhost;")[1].split("\n    }\n")[0]
    assert "location = /docs {" in docs and "location /docs/ {" in docs
    not_found = section(docs, "location / {")
    assert "error_page 404 $paas_unknown_route_page;" in not_found
    assert "return 404;" in not_found


def test_a_route_without_instances_gets_the_no_instances_page() -> None:
    text = render_scenario("no_instances")
    location = section(text.split("server_name down.localhost;")[1], "location / {")
    assert "error_page 503 $paas_no_instances_page;" in location
    assert "return 503;" in location and "proxy_pass" not in text
    page = section(text.split("server_name down.localhost;")[1],
                   "location @paas_no_instances_json {")
    assert "add_header X-Paas-Router-Error no_instances always;" in page
    assert """return 503 '{"error": "no_instances",""" in page


def test_sticky_sessions_pin_by_instance_cookie_with_the_others_as_backup() -> None:
    text = render_scenario("sticky_cookies")
    assert section(text, "map $upstream_addr $paas_upstream_instance {") == (
        "    map $upstream_addr $paas_upstream_instance {\n"
        '        default "";\n'
        '        "127.0.0.1:61001" inst-sticky-0;\n'
        '        "127.0.0.1:61002" inst-sticky-1;\n'
        "    }")
    assert ('    map "$upstream_cookie_JSESSIONID$upstream_cookie_SESSION" '
            "$paas_sticky_instance {") in text
    assert '"__PAAS_INSTANCE=$paas_sticky_instance; Path=/cart; HttpOnly"' in text
    routes, backends, _ = sticky_cookies()
    assert render(routes, backends, sticky_cookies="SESSION, JSESSIONID") == text
    assert '"__PAAS_INSTANCE=$paas_sticky_instance; Path=/; HttpOnly"' in text
    pick = section(text, "map $cookie___PAAS_INSTANCE $paas_pick_")
    normal = upstream_name("guid-sticky", "round-robin")
    assert f"        default {normal};" in pick
    pinned = pick.splitlines()[2].split()[1].rstrip(";")
    upstream = section(text, f"upstream {pinned} {{")
    assert "server 127.0.0.1:61001;" in upstream
    assert "server 127.0.0.1:61002 backup;" in upstream
    location = section(text.split("server_name sticky.localhost;")[1], "location / {")
    assert "if ($cookie___PAAS_INSTANCE) { return 419; }" in location
    assert "add_header Set-Cookie $paas_sticky_cookie_" in location
    assert "proxy_pass http://$paas_pick_" in section(text, "location @paas_sticky_0 {")


def test_tls_servers_for_routes_with_a_certificate_and_redirects() -> None:
    text = render_scenario("tls_and_redirect")
    assert "    ssl_protocols TLSv1.2 TLSv1.3;" in text
    listen = "listen 127.0.0.1:8443 ssl http2 default_server;"
    default = section(text, listen)
    assert "ssl_reject_handshake on;" in text.split(listen)[1]
    del default
    servers = text.split("\n    server {\n")
    secure = [s for s in servers if "server_name secure.example.com;" in s]
    plain, tls = sorted(secure, key=lambda s: "ssl" in s)
    assert "return 308 https://$host:8443$request_uri;" in plain
    assert "listen 127.0.0.1:8443 ssl http2;" in tls
    assert f'ssl_certificate "{RT}/certs/example.pem";' in tls
    assert f'ssl_certificate_key "{RT}/certs/example.key";' in tls
    assert "return 308" not in tls and "proxy_pass" in tls
    # No certificate for localhost: served on HTTP only, and not redirected.
    local = [s for s in servers if "server_name plain.localhost;" in s]
    assert len(local) == 1 and "return 308" not in local[0]
    assert "return 308 https://$host$request_uri;" in render_scenario("tls_on_443")


def test_unknown_hosts_get_a_404_page_naming_the_host() -> None:
    text = render_scenario("one_app")
    default = section(text, "    server {")
    assert "listen 127.0.0.1:8080 default_server;" in default
    assert "add_header X-Paas-Router-Error unknown_route always;" in default
    assert 'return 404 "<!doctype html>' in default
    assert "No app is at <b>${paas_safe_host}</b>" in default
    assert '"~^[a-z0-9.-]{1,253}$" $host;' in text


def test_json_clients_get_json_error_pages() -> None:
    text = render_scenario("one_app")
    for reason in ("unknown_route", "no_instances", "backend_unavailable", "body_too_large"):
        assert section(text, f"map $http_accept $paas_{reason}_page {{") == (
            f"    map $http_accept $paas_{reason}_page {{\n"
            f'        "~*application/json" @paas_{reason}_json;\n'
            f"        default @paas_{reason};\n"
            "    }")
    app = text.split("server_name myapp.localhost;")[1]
    page = section(app, "location @paas_backend_unavailable_json {")
    assert "default_type application/json;" in page
    assert "add_header X-Paas-Router-Error backend_unavailable always;" in page
    assert """return 503 '{"error": "backend_unavailable",""" in page
    assert "error_page 502 504 =503 $paas_backend_unavailable_page;" in app


def test_request_id_is_kept_when_a_plain_token_and_echoed() -> None:
    text = render_scenario("one_app")
    assert section(text, "map $http_x_request_id $paas_request_id {") == (
        "    map $http_x_request_id $paas_request_id {\n"
        '        "" $msec-$pid-$connection-$connection_requests;\n'
        '        "~^[A-Za-z0-9._-]{1,200}$" $http_x_request_id;\n'
        "        default $msec-$pid-$connection-$connection_requests;\n"
        "    }")
    app = text.split("server_name myapp.localhost;")[1]
    assert "add_header X-Request-Id $paas_request_id always;" in section(app, "location / {")
    assert "proxy_hide_header X-Request-Id;" in text
    assert '"~^(?<paas_s>[0-9]+)\\.(?<paas_ms>[0-9]+)$" "t=$paas_s$paas_ms";' in text


def test_access_lines_and_body_limit() -> None:
    text = render_scenario("access_log_and_body_limit")
    fields = "\\t".join([
        "$upstream_addr", "$msec", "$request_method", "$request_uri", "$status",
        "$body_bytes_sent", "$request_time", "$paas_request_id", "$host"])
    assert f"    log_format paas_rtr '{fields}';\n" in text
    assert (f'    access_log "{RT}/access.log" paas_rtr buffer=32k flush=100ms;\n') in text
    assert "        access_log off;\n" in section(text, "    server {")  # unknown hosts
    assert "    client_max_body_size 5m;" in text
    assert 'map "" $paas_max_body { default "5 MB"; }' in text
    page = section(text.split("server_name myapp.localhost;")[1], "location @paas_body_too_large {")
    assert "add_header X-Paas-Router-Error body_too_large always;" in page
    assert "larger than the router accepts" in page
    with pytest.raises(ValueError, match="access log path"):
        render([], [], access_log_path="/tmp/$x")
    with pytest.raises(ValueError, match="max body"):
        render([], [], max_body_mb=0)


# -- validation and determinism ---------------------------------------------------------------


def test_same_input_in_any_order_renders_identical_text() -> None:
    routes, backends, overrides = path_routes()
    routes += sticky_cookies()[0]
    backends += sticky_cookies()[1]
    texts = {render(list(r), list(b), **overrides)
             for r in itertools.permutations(routes[:4]) for b in (backends, backends[::-1])}
    assert len(texts) == 1
    assert render(routes + routes, backends + backends) == render(routes, backends)
    assert render(iter(routes), iter(backends)) == render(routes, backends)


def test_hosts_are_case_insensitive() -> None:
    text = render([route("MyApp.Localhost", "a")], [backend("a", 1)])
    assert "server_name myapp.localhost;" in text and "MyApp" not in text


@pytest.mark.parametrize(
    "host",
    ["evil.localhost; } server { listen 80", "evil.localhost\n", "a b.localhost", "$host",
     "evil.localhost;", 'a"b.localhost', "-leading.localhost", "under_score.localhost", "",
     "a" * 64 + ".localhost", "x." * 130 + "com", "*", "*.", "**.example.com",
     "a.*.example.com", "*example.com", "~^(.*)$"],
)
def test_hosts_that_are_not_dns_names_are_skipped(host: str) -> None:
    good = route("ok.localhost", "ok")
    assert normalize_host(host) is None
    assert route_problem(route(host, "bad")) is not None
    backends = [backend("ok", 1), backend("bad", 2)]
    assert render([good, route(host, "bad")], backends) == render([good], backends)


def test_wildcard_hosts_are_accepted() -> None:
    assert normalize_host("*.Apps.Example.com") == "*.apps.example.com"
    assert "server_name *.apps.example.com;" in render_scenario("wildcard_and_exact_hosts")


@pytest.mark.parametrize(
    "path",
    ["/", "p", "/p/", "//p", "/p//q", "/p q", "/p;", "/p{", "/p}", "/$host", "/p%20q", "/p'q",
     '/p"q', "/p#q", "/p?q", "/(x)", "/p\\q", "/./p", "/p/..", "/p\n", "/" + "a" * 1024,
     None, 5],
)
def test_unsafe_paths_are_skipped(path: object) -> None:
    assert not valid_path(path)
    bad = route("ok.localhost", "ok", path="/x")
    bad = MappedRoute(**{**bad.__dict__, "path": path})
    assert route_problem(bad) is not None
    assert render([bad], [backend("ok", 1)]) == render([], [backend("ok", 1)])


@pytest.mark.parametrize("path", ["/p", "/a/b/c", "/v1.2", "/~user", "/a-b_c", "/@x:y=z,w+!*"])
def test_safe_paths_are_kept(path: str) -> None:
    assert valid_path(path)
    assert f"location = {path} {{" in render([route("ok.localhost", "ok", path)], [])


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1:80; include /etc/passwd", "127.0.0.1:80\n", "127.0.0.1", "localhost:80",
     "127.0.0.1:0", "127.0.0.1:65536", "256.0.0.1:80", "::1:80", "[127.0.0.1]:80",
     "[::1%eth0]:80", "unix:/tmp/x.sock", "", 80],
)
def test_backends_that_are_not_ip_port_are_skipped(address: object) -> None:
    good = backend("ok", 61001)
    bad = Backend(backend=address, app_guid="guid-ok", app_name="ok",  # type: ignore[arg-type]
                  instance_guid="x")
    assert parse_backend(address) is None
    assert backend_problem(bad) is not None
    routes = [route("ok.localhost", "ok")]
    assert render(routes, [good, bad]) == render(routes, [good])


@pytest.mark.parametrize("field", ["app_guid", "instance_guid"])
@pytest.mark.parametrize("value", ["a b", "a;b", "", "x\n", "$x", '"', None, ["x"]])
def test_backends_with_unsafe_guids_are_skipped(field: str, value: object) -> None:
    bad = Backend(**{**backend("ok", 61002).__dict__, field: value})
    assert backend_problem(bad) is not None


@pytest.mark.parametrize(
    ("field", "value"),
    [("guid", "a b"), ("app_guid", "x;y"), ("app_guid", ""), ("balance", "random"),
     ("https_redirect", "yes"), ("domain", None)],
)
def test_routes_with_bad_fields_are_skipped(field: str, value: object) -> None:
    bad = MappedRoute(**{**route("ok.localhost", "ok").__dict__, field: value})
    assert route_problem(bad) is not None


def test_app_names_only_reach_comments_when_harmless() -> None:
    bad = MappedRoute(**{**route("ok.localhost", "ok").__dict__, "app_name": "x\n}\nserver {"})
    text = render([bad], [backend("ok", 1)])
    assert "# app:" not in text and "server {\n}" not in text
    assert "x\n}" not in text


def test_two_routes_for_one_host_and_path_keep_the_smaller_guid() -> None:
    first = route("dup.localhost", "a")
    second = MappedRoute(**{**route("dup.localhost", "b").__dict__, "guid": "zzz"})
    kept, problems = usable_routes([second, first])
    assert kept == [first]
    assert len(problems) == 1 and f"only {first.guid!r} is served" in problems[0]
    assert render([second, first], []) == render([first], [])


@pytest.mark.parametrize(
    ("kw", "word"),
    [({"listen_port": 0}, "port"), ({"listen_port": 70000}, "port"),
     ({"listen_host": "127.0.0.1; x"}, "host"), ({"runtime_dir": '/tmp/a"b'}, "runtime_dir"),
     ({"runtime_dir": "/tmp/$x"}, "runtime_dir"), ({"https_port": 8080}, "HTTPS port"),
     ({"https_port": 70000}, "port"), ({"sticky_cookies": ["a-b"]}, "sticky cookie"),
     ({"certificates": {"example.com": ("/a\"b", "/k")}}, "certificate path")],
)
def test_bad_arguments_are_refused(kw: dict[str, object], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        render([], [], **kw)


def test_many_or_long_hosts_grow_the_server_names_hash() -> None:
    assert "server_names_hash_max_size 512;" in render([], [])
    routes = [route(f"app{i}.localhost", f"a{i}") for i in range(300)]
    assert "server_names_hash_max_size 2048;" in render(routes, [])
    longest = ".".join(["a" * 63] * 3 + ["b" * 61])
    assert len(longest) == 253
    assert "server_names_hash_bucket_size 512;" in render([route(longest, "a")], [])


def test_upstream_names_are_safe_and_distinct() -> None:
    names = {upstream_name(g, b) for g in ("a", "b") for b in ("round-robin", LEAST_CONNECTIONS)}
    assert len(names) == 4
    assert all(n.startswith("app_") and n.replace("_", "").isalnum() for n in names)




def test_a_config_names_its_generation_and_the_marker_that_retires_it() -> None:
    from router.render import retired_marker

    text = render_scenario("one_app")
    marker = retired_marker(text, f"{RT}/retired")
    assert marker is not None and marker.startswith(f"{RT}/retired/")
    assert f'if (-f "{marker}") {{ return 420; }}' in text
    assert render_scenario("one_app") == text  # the same input, the same generation
    assert retired_marker(render_scenario("path_routes"), f"{RT}/retired") != marker
    closing = section(text, "location @paas_closing_0 {")
    assert "keepalive_timeout 0;" in closing and "proxy_pass http://app_" in closing
    assert retired_marker("daemon off;", RT) is None
    elsewhere = render_nginx_config([], [], listen_host="127.0.0.1", listen_port=8080,
                                    runtime_dir=RT, retired_dir="/run/paas-router-x")
    assert retired_marker(elsewhere, "/run/paas-router-x")
