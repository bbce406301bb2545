#!/usr/bin/env bash
# Host set-up for `make up` and `make test`: idempotent, and fast when everything is there.
#  - Debian packages the platform stands on (docker.io, redis-server, nginx, debootstrap);
#  - dockerd and redis-server running and answering;
#  - a venv at .venv with the project installed;
#  - the stack images, built only when missing or when their recipe changed.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: %s\n' "$*" >&2; exit 1; }

# --- Debian packages ---------------------------------------------------------------
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v redis-server >/dev/null || need+=(redis-server)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || need+=(nginx)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v ss >/dev/null || [ -x /usr/sbin/ss ] || [ -x /usr/bin/ss ] || need+=(iproute2)
# Network isolation of app containers (confinement/) writes iptables rules; gVisor's runsc is
# the stronger OCI runtime a team or app may be given (PAAS_CONTAINER_RUNTIME_*).
command -v iptables-restore >/dev/null || need+=(iptables)
command -v runsc >/dev/null || need+=(runsc)
# Debian's docker.io (20.10) needs apparmor_parser where the kernel enforces AppArmor.
if [ "$(cat /sys/module/apparmor/parameters/enabled 2>/dev/null)" = Y ]; then
  command -v apparmor_parser >/dev/null || need+=(apparmor)
fi
# A venv needs ensurepip, which Debian ships apart (python3-venv).
if [ -z "${PYTHON:-}" ] && [ "$(command -v python3)" = /usr/bin/python3 ]; then
  python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
fi
for extra in ${PAAS_SETUP_EXTRA_PACKAGES:-}; do
  dpkg -s "$extra" >/dev/null 2>&1 || need+=("$extra")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    die "missing ${need[*]}: install them with your package manager (on Debian, as root: apt-get install ${need[*]}) and run this again."
  fi
  say "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# --- Python venv with the project ---------------------------------------------------
python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "Python 3.11 or newer is needed as '$python': install python3 (or set PYTHON=/path/to/python3.11)."
stamp=.venv/.paas-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -x .venv/bin/pip ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing the project into .venv (log: .venv/install.log)"
  if [ ! -x .venv/bin/pip ]; then
    rm -rf .venv
    "$python" -m venv .venv || die "could not create a venv with '$python': install python3-venv and run this again."
  fi
  if ! { .venv/bin/pip install --upgrade pip && .venv/bin/pip install -e '.[test]'; } \
      > .venv/install.log 2>&1; then
    tail -n 20 .venv/install.log >&2
    die "installing the project's Python packages failed (the lines above say why)."
  fi
  echo "$want" > "$stamp"
fi

# --- dockerd and redis-server ----------------------------------------------------------
wait_for() {  # $1 what, $2 seconds, $3 log, rest: command that succeeds once it answers
  local what=$1 secs=$2 log=$3; shift 3
  for _ in $(seq "$((secs * 10))"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  tail -n 15 "$log" >&2 2>/dev/null || true
  die "$what did not answer within ${secs}s (its log: $log)."
}
# --- dockerd knows runsc ---------------------------------------------------------------
# gVisor with ptrace (no KVM needed) and its host network mode inside the container's own
# network namespace: a container so started answered its first request 0.7 s after `docker run`.
if [ "$(id -u)" = 0 ] && command -v runsc >/dev/null; then
  if ! grep -q '"runsc"' /etc/docker/daemon.json 2>/dev/null; then
    say "registering runsc (gVisor) with dockerd in /etc/docker/daemon.json"
    mkdir -p /etc/docker
    python3 - "$(command -v runsc)" <<'PY'
import json, sys
from pathlib import Path
path = Path("/etc/docker/daemon.json")
config = json.loads(path.read_text() or "{}") if path.exists() else {}
config.setdefault("runtimes", {})["runsc"] = {
    "path": sys.argv[1], "runtimeArgs": ["--platform=ptrace", "--network=host"]}
path.write_text(json.dumps(config, indent=2) + "\n")
PY
    # A running dockerd reads its runtimes again on SIGHUP; a new one reads the file at start.
    if pgrep -x dockerd >/dev/null; then
      kill -HUP "$(pgrep -x dockerd | head -n1)"
      for _ in $(seq 50); do docker info 2>/dev/null | grep -q 'Runtimes:.*runsc' && break; sleep 0.1; done
    fi
  fi
fi
if ! docker info >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || die "the Docker engine is not running and only root can start it here: start dockerd (or add yourself to the docker group) and run this again."
  if ! pgrep -x dockerd >/dev/null; then
    # Pid files left by a dockerd that did not stop cleanly would stop a new one.
    rm -f /var/run/docker.pid /var/run/docker/containerd/containerd.pid
  fi
  say "starting dockerd (log: /var/log/paas-dockerd.log)"
  # Its own session: Ctrl-C on `make up` must not stop the engine (and every app with it).
  setsid nohup dockerd >/var/log/paas-dockerd.log 2>&1 < /dev/null &
  wait_for dockerd 60 /var/log/paas-dockerd.log docker info
fi
# Redis: `make up` runs the platform's own redis-server, with a password (launcher/up.py), and
# the tests one per sandbox. An open one on 6379 that an earlier set-up started (no password,
# log /var/log/paas-redis.log) would hold the port: it is stopped. So is the service Debian's
# package starts, when this set-up installed the package (systemd hosts).
if [ "$(redis-cli -h 127.0.0.1 -p 6379 config get logfile 2>/dev/null | tail -n 1)" = /var/log/paas-redis.log ]; then
  say "stopping the redis-server without a password on 127.0.0.1:6379 (make up runs its own)"
  redis-cli -h 127.0.0.1 -p 6379 shutdown nosave >/dev/null 2>&1 || true
fi
if [[ " ${need[*]:-} " == *" redis-server "* ]] && command -v systemctl >/dev/null \
    && systemctl is-active --quiet redis-server 2>/dev/null; then
  say "stopping Debian's redis-server service (make up runs its own, with a password)"
  systemctl disable --now redis-server >/dev/null 2>&1 || true
fi

# --- the stack images ----------------------------------------------------------------
.venv/bin/python -m launcher.stack
