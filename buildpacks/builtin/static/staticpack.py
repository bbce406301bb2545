"""Static buildpack: serve the app's files with nginx (from the run stack) on ``$PORT``.

``bin/compile`` reads the optional ``Staticfile`` (``root: public``, ``pushstate: enabled``),
writes ``.static/nginx.conf`` (a template: the port is filled in at start) and
``.static/boot.sh``, and checks the configuration with ``nginx -t``. nginx runs in the
foreground as the app's user, with its pid and temporary files under /tmp. Dot files are
not served (except ``/.well-known/``), nor are the Staticfile and Procfile.

Runs inside the staging container with the stack's python3 (standard library only).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

APP_HOME = "/app"  # where the droplet lives at run time
CONF_DIR = ".static"
PORT_MARK = "__PORT__"
KNOWN = {"root", "pushstate"}
SAFE_PATH = re.compile(r"^[A-Za-z0-9._/-]+$")


class BuildFailed(Exception):
    """A sentence for the pusher: what went wrong and what to do."""


def say(text: str) -> None:
    print(f"-----> {text}", flush=True)


def note(text: str) -> None:
    print(f"       {text}", flush=True)


def parse_staticfile(text: str) -> dict[str, str]:
    """``key: value`` lines; comments (#) and blank lines skipped; keys lower-cased."""
    options: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, sep, value = line.partition(":")
        if not sep or not key.strip():
            raise BuildFailed(f"Staticfile line {number} is not 'key: value' ({raw.strip()!r}): "
                              "fix it (e.g. 'root: public') and push again.")
        options[key.strip().lower()] = value.strip().strip("'\"")
    return options


def web_root(build: str, options: dict[str, str]) -> str:
    """The folder to serve, relative to the app ('' for the app itself)."""
    root = options.get("root", "").strip().strip("/")
    if root in ("", "."):
        return ""
    norm = os.path.normpath(root)
    if norm.startswith("..") or not SAFE_PATH.match(norm):
        raise BuildFailed(f"Staticfile says 'root: {root}', which is not a folder inside the app "
                          "(letters, digits, '.', '_', '-' and '/' only): fix it and push again.")
    if not os.path.isdir(os.path.join(build, norm)):
        raise BuildFailed(f"Staticfile says 'root: {root}' but the app has no folder {norm}/: "
                          "create it or change the root, and push again.")
    return norm


def enabled(value: str | None) -> bool:
    return (value or "").strip().lower() in ("enabled", "true", "yes", "on", "1")


def nginx_conf(root: str, pushstate: bool = False, port: str = PORT_MARK) -> str:
    """The whole nginx configuration for serving ``root`` (an absolute path) on ``port``."""
    fallback = "/index.html" if pushstate else "=404"
    hidden = ""
    if root == APP_HOME:
        hidden = ("    location = /Staticfile { return 404; }\n"
                  "    location = /Procfile { return 404; }\n")
    return f"""\
# Written by the static buildpack; {PORT_MARK} becomes $PORT when the instance starts.
worker_processes 1;
daemon off;
pid /tmp/nginx.pid;
error_log stderr;
events {{ worker_connections 1024; }}
http {{
  include /etc/nginx/mime.types;
  default_type application/octet-stream;
  charset utf-8;
  access_log /dev/stdout;
  client_body_temp_path /tmp/nginx-client-body;
  proxy_temp_path /tmp/nginx-proxy;
  fastcgi_temp_path /tmp/nginx-fastcgi;
  uwsgi_temp_path /tmp/nginx-uwsgi;
  scgi_temp_path /tmp/nginx-scgi;
  sendfile on;
  tcp_nopush on;
  keepalive_timeout 65;
  server_tokens off;
  gzip on;
  gzip_types text/css text/plain text/xml application/javascript application/json image/svg+xml;
  server {{
    listen {port};
    root "{root}";
    index index.html index.htm;
    location / {{ try_files $uri $uri/ {fallback}; }}
    location ~ /\\.(?!well-known/) {{ return 404; }}
{hidden}  }}
}}
"""


BOOT = f"""\
#!/bin/sh
# Written by the static buildpack: nginx on $PORT, in the foreground.
set -e
sed "s/{PORT_MARK}/${{PORT:-8080}}/" "$HOME/{CONF_DIR}/nginx.conf" > /tmp/nginx.conf
exec nginx -e stderr -c /tmp/nginx.conf
"""

START_COMMAND = f"sh {APP_HOME}/{CONF_DIR}/boot.sh"


def compile_app(build: str) -> None:
    staticfile = os.path.join(build, "Staticfile")
    options: dict[str, str] = {}
    if os.path.isfile(staticfile):
        with open(staticfile, encoding="utf-8", errors="replace") as f:
            options = parse_staticfile(f.read())
    for key in sorted(set(options) - KNOWN):
        note(f"(Staticfile: '{key}' is not an option this buildpack knows: ignored)")
    root = web_root(build, options)
    served = f"{APP_HOME}/{root}" if root else APP_HOME
    say(f"Static site detected: serving {served} with nginx")
    if not os.path.isfile(os.path.join(build, root, "index.html")):
        note(f"(there is no index.html in {served}: '/' will answer 404)")
    pushstate = enabled(options.get("pushstate"))
    if pushstate:
        note("(pushstate: unknown paths answer with /index.html)")

    conf = nginx_conf(served, pushstate)
    folder = os.path.join(build, CONF_DIR)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "nginx.conf"), "w") as f:
        f.write(conf)
    with open(os.path.join(folder, "boot.sh"), "w") as f:
        f.write(BOOT)
    os.chmod(os.path.join(folder, "boot.sh"), 0o755)
    check(nginx_conf(os.path.join(build, root) if root else build, pushstate, "8080"))


def check(conf: str) -> None:
    """``nginx -t`` on the configuration, when nginx is on this stack."""
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
        f.write(conf)
    try:
        proc = subprocess.run(["nginx", "-e", "stderr", "-t", "-c", f.name],
                              capture_output=True, text=True)
    except FileNotFoundError as e:
        raise BuildFailed("the stack has no nginx, which the static buildpack needs: ask the "
                          "platform operators to add it to the run stack.") from e
    finally:
        os.unlink(f.name)
    if proc.returncode != 0:
        print(proc.stderr, end="", flush=True)
        raise BuildFailed("nginx rejected the configuration for this site (its error is "
                          "above): check the Staticfile and push again.")


def fail(message: str) -> None:
    print(f"!     {message}", flush=True)
    sys.exit(1)


def compile_main(argv: list[str]) -> None:
    if not argv:
        fail("usage: bin/compile BUILD_DIR CACHE_DIR [ENV_DIR]")
    try:
        compile_app(argv[0])
    except BuildFailed as e:
        fail(str(e))


def release_main(argv: list[str]) -> None:
    sys.stdout.write(f'---\ndefault_process_types:\n  web: "{START_COMMAND}"\n')
