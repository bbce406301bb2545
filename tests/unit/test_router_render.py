"""render_nginx_config: the route table as nginx sees it."""

from __future__ import annotations

import itertools

import pytest

from contracts.messages import Route
from router.render import (
    normalize_host,
    parse_backend,
    render_nginx_config,
    route_problem,
    upstream_name,
)

RT = "/run/paas/router"


def render(routes: list[Route], **kw: object) -> str:
    args: dict[str, object] = {"listen_host": "127.0.0.1", "listen_port": 8080, "runtime_dir": RT}
    args.update(kw)
    return render_nginx_config(routes, **args)  # type: ignore[arg-type]


def route(host: str, backend: str, app: str = "myapp", guid: str = "g", index: int = 0) -> Route:
    return Route(host=host, backend=backend, app_name=app, instance_guid=guid, index=index)


def test_one_host_renders_upstream_and_server_exactly() -> None:
    text = render([route("myapp.localhost", "127.0.0.1:61001")])
    name = upstream_name("myapp.localhost")
    expected = f"""
    upstream {name} {{
        # app: myapp
        server 127.0.0.1:61001;
        keepalive 32;
        keepalive_timeout 1s;
    }}

    server {{
        listen 127.0.0.1:8080;
        server_name myapp.localhost;
        location / {{
            proxy_pass http://{name};
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header Connection $paas_connection;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Request-Id $paas_request_id;
            proxy_set_header X-Request-Start $paas_request_start;
            proxy_set_header Proxy-Connection "";
            proxy_set_header Proxy-Authorization "";
            proxy_set_header Trailer "";
            proxy_hide_header X-Request-Id;
            add_header X-Request-Id $paas_request_id always;
            proxy_connect_timeout 2s;
            proxy_next_upstream error timeout;
            error_page 502 504 =503 $paas_unavailable_page;
            error_page 413 $paas_too_large_page;
        }}
"""
    assert expected in text
    assert text.count("    upstream app_") == 1
    assert text.count("server_name ") == 2  # the app's and the default server's


def test_main_context_is_foreground_with_everything_under_runtime_dir() -> None:
    text = render([])
    head = text.split("http {")[0]
    assert "daemon off;\nmaster_process on;\nworker_processes 1;\n" in head
    assert f'pid "{RT}/nginx.pid";' in head
    assert f'error_log "{RT}/error.log" warn;' in head
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        assert f'    {kind}_temp_path "{RT}/{kind}_temp";' in text
    assert "    access_log off;" in text
    assert "    server_names_hash_bucket_size 128;" in text
    assert text.endswith("}\n")
    assert text.count("{") == text.count("}")


def test_unknown_hosts_get_a_404_page_naming_the_host() -> None:
    text = render([route("myapp.localhost", "127.0.0.1:61001")])
    default = text.split("    server {")[1]
    assert "listen 127.0.0.1:8080 default_server;" in default
    assert "add_header X-Paas-Router-Error unknown_route always;" in default
    assert "default_type text/html;" in default
    assert 'return 404 "<!doctype html>' in default
    assert "No app is at <b>${paas_safe_host}</b>" in default
    # Only hosts that look like DNS names are echoed into the page.
    assert '"~^[a-z0-9.-]{1,253}$" $host;' in text


def test_empty_route_table_still_serves_the_404_page() -> None:
    text = render([])
    assert "# hosts: 0, backends: 0" in text
    assert "    upstream app_" not in text
    assert "default_server" in text


def test_several_backends_share_one_upstream_sorted_numerically() -> None:
    routes = [
        route("a.localhost", "127.0.0.1:61010", guid="1"),
        route("a.localhost", "127.0.0.1:61009", guid="2"),
        route("a.localhost", "10.0.0.10:80", guid="3"),
        route("a.localhost", "10.0.0.9:80", guid="4"),
        route("a.localhost", "127.0.0.1:61009", guid="5"),  # same backend twice
    ]
    text = render(routes)
    servers = [line.strip() for line in text.splitlines() if line.startswith("        server ")]
    assert servers == [
        "server 10.0.0.9:80;",
        "server 10.0.0.10:80;",
        "server 127.0.0.1:61009;",
        "server 127.0.0.1:61010;",
    ]
    assert text.count("    upstream app_") == 1
    assert "# hosts: 1, backends: 4" in text


def test_hosts_are_case_insensitive_and_merged() -> None:
    text = render(
        [route("MyApp.Localhost", "127.0.0.1:1"), route("myapp.localhost", "127.0.0.1:2")]
    )
    assert "server_name myapp.localhost;" in text
    assert "MyApp" not in text
    assert text.count("    upstream app_") == 1


def test_same_routes_in_any_order_render_identical_text() -> None:
    routes = [
        route("b.localhost", "127.0.0.1:3", app="b"),
        route("a.localhost", "127.0.0.1:2", app="a"),
        route("a.localhost", "127.0.0.1:1", app="a", index=1),
        route("c.localhost", "[::1]:4", app="c"),
        route("bad host", "127.0.0.1:5"),
    ]
    texts = {render(list(p)) for p in itertools.permutations(routes)}
    assert len(texts) == 1
    assert render(routes + routes) == texts.pop()
    assert render(iter(routes)) == render(routes)


@pytest.mark.parametrize(
    "host",
    [
        "evil.localhost; } server { listen 80",
        "evil.localhost\n",
        "a b.localhost",
        "$host",
        "*.localhost",
        "evil.localhost;",
        'a"b.localhost',
        "-leading.localhost",
        "under_score.localhost",
        "",
        "a" * 64 + ".localhost",
        "x." * 130 + "com",
    ],
)
def test_hosts_that_are_not_dns_names_are_skipped(host: str) -> None:
    good = route("ok.localhost", "127.0.0.1:61001")
    assert normalize_host(host) is None
    assert route_problem(route(host, "127.0.0.1:61002")) is not None
    assert render([good, route(host, "127.0.0.1:61002")]) == render([good])


@pytest.mark.parametrize(
    "backend",
    [
        "127.0.0.1:80; include /etc/passwd",
        "127.0.0.1:80\n",
        "127.0.0.1",
        "localhost:80",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "256.0.0.1:80",
        "::1:80",
        "[127.0.0.1]:80",
        "[::1%eth0]:80",
        "unix:/tmp/x.sock",
        "",
    ],
)
def test_backends_that_are_not_ip_port_are_skipped(backend: str) -> None:
    good = route("ok.localhost", "127.0.0.1:61001")
    assert parse_backend(backend) is None
    assert route_problem(route("ok.localhost", backend)) is not None
    assert render([good, route("ok.localhost", backend)]) == render([good])


def test_non_string_fields_from_bad_json_are_skipped() -> None:
    bad = Route(host=["x"], backend=80, app_name=None, instance_guid="g")  # type: ignore[arg-type]
    assert route_problem(bad) is not None
    assert render([bad]) == render([])


def test_app_names_only_reach_comments_when_harmless() -> None:
    text = render([route("ok.localhost", "127.0.0.1:1", app="x\n}\nserver {")])
    assert "server {\n" not in text.split("upstream ")[1].split("}")[0]
    assert "# app:" not in text


def test_ipv6_backends_and_listen_address_are_bracketed() -> None:
    text = render([route("v6.localhost", "[::1]:8000")], listen_host="::1")
    assert "server [::1]:8000;" in text
    assert "listen [::1]:8080 default_server;" in text


def test_upstream_names_are_safe_and_distinct() -> None:
    a, b = upstream_name("my-app.localhost"), upstream_name("my.app.localhost")
    assert a != b
    assert a.startswith("app_my_app_localhost_")
    assert all(c.isalnum() or c == "_" for c in a + b)


@pytest.mark.parametrize(
    ("kw", "word"),
    [
        ({"listen_port": 0}, "port"),
        ({"listen_port": 70000}, "port"),
        ({"listen_host": "127.0.0.1; x"}, "host"),
        ({"runtime_dir": '/tmp/a"b'}, "runtime_dir"),
        ({"runtime_dir": "/tmp/$x"}, "runtime_dir"),
    ],
)
def test_bad_listen_or_runtime_dir_is_refused(kw: dict[str, object], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        render([], **kw)


def test_many_or_long_hosts_grow_the_server_names_hash() -> None:
    assert "server_names_hash_max_size 512;" in render([])
    routes = [route(f"app{i}.localhost", f"127.0.0.1:{1000 + i}") for i in range(300)]
    assert "server_names_hash_max_size 2048;" in render(routes)
    longest = ".".join(["a" * 63] * 3 + ["b" * 61])
    assert len(longest) == 253
    assert "server_names_hash_bucket_size 512;" in render([route(longest, "127.0.0.1:1")])


def test_access_lines_go_to_the_router_over_syslog_when_it_listens() -> None:
    text = render([route("myapp.localhost", "127.0.0.1:61001")], access_log_port=51234)
    fields = "\\t".join([
        "$msec", "$request_method", "$request_uri", "$status", "$body_bytes_sent",
        "$request_time", "$upstream_addr", "$paas_request_id", "$host"])
    assert f"    log_format paas_rtr '{fields}';\n" in text
    assert (
        "    access_log syslog:server=127.0.0.1:51234,tag=paas,nohostname paas_rtr;\n" in text
    )
    assert "    access_log off;" not in text.split("    server {")[0]
    default = text.split("    server {")[1]
    assert "        access_log off;\n" in default  # unknown hosts: no app to log for
    with pytest.raises(ValueError, match="access log port"):
        render([], access_log_port=70000)


def test_request_id_is_kept_when_a_plain_token_and_echoed() -> None:
    text = render([route("myapp.localhost", "127.0.0.1:61001")])
    assert (
        "    map $http_x_request_id $paas_request_id {\n"
        '        "~^[A-Za-z0-9._-]{1,200}$" $http_x_request_id;\n'
        "        default $request_id;\n"
        "    }\n"
    ) in text
    # Echoed on every response: proxied, 503 (HTML and JSON) and the default server's 404.
    assert text.count("add_header X-Request-Id $paas_request_id always;") == 6
    assert (
        "    map $msec $paas_request_start {\n"
        '        "~^(?<paas_s>[0-9]+)\\.(?<paas_ms>[0-9]+)$" "t=$paas_s$paas_ms";\n'
    ) in text


def test_json_clients_get_json_error_pages_with_the_same_header() -> None:
    text = render([route("myapp.localhost", "127.0.0.1:61001")])
    assert '        "~*application/json" @paas_not_found_json;\n' in text
    assert '        "~*application/json" @paas_unavailable_json;\n' in text
    default = text.split("    server {")[1]
    assert "error_page 404 $paas_not_found_page;\n            return 404;\n" in default
    json_404 = default.split("location @paas_not_found_json {")[1]
    assert "default_type application/json;" in json_404
    assert """return 404 '{"error": "unknown_route", "detail": "No app is at""" in json_404
    app = text.split("location @paas_unavailable_json {")[1]
    assert "default_type application/json;" in app
    assert "add_header X-Paas-Router-Error backend_unavailable always;" in app
    assert """return 503 '{"error": "backend_unavailable",""" in app


def test_body_size_limit_is_a_setting_with_its_own_413_pages() -> None:
    text = render_nginx_config([route("myapp.localhost", "127.0.0.1:61001")],
                               listen_host="127.0.0.1", listen_port=8080, runtime_dir=RT,
                               max_body_mb=5)
    assert "    client_max_body_size 5m;" in text
    assert 'map "" $paas_max_body { default "5 MB"; }' in text
    too_large = text.split("location @paas_too_large {")[1].split("\n        }")[0]
    assert "add_header X-Paas-Router-Error body_too_large always;" in too_large
    assert "return 413" in too_large and "larger than the router accepts" in too_large
    as_json = text.split("location @paas_too_large_json {")[1].split("\n        }")[0]
    assert "default_type application/json;" in as_json and '"body_too_large"' in as_json
    with pytest.raises(ValueError):
        render_nginx_config([], listen_host="127.0.0.1", listen_port=8080, runtime_dir=RT,
                            max_body_mb=0)
