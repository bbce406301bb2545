"""Packet-filter rules that keep app and staging containers off the host and private ranges.

Each platform network's bridge gets two chains of its own:

- ``PAAS-I-<id>`` (jumped to from ``INPUT`` for traffic that enters the host from the bridge):
  only replies to connections the host opened (the router and the agent's health checks reach
  instances through published ports) and what an operator allowed get through; a container's
  own connection to any of the host's addresses, whatever port (Redis, the database, the API,
  the router), is refused.
- ``PAAS-F-<id>`` (jumped to from Docker's ``DOCKER-USER`` for forwarded traffic): DNS to the
  host's resolvers and the ranges an operator allowed pass; the denied ranges (private networks
  and the link-local metadata address 169.254.169.254 by default) are refused; with ``ports``,
  only those TCP ports reach anywhere else (staging: the package indexes).

Rules are refused with ``REJECT``, so an app sees "connection refused" at once instead of a
connect that hangs. A chain is written whole by one ``iptables-restore --noflush``, which
swaps its rules in one transaction: there is no moment in which a bridge is unfiltered.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

INPUT_PREFIX = "PAAS-I-"
FORWARD_PREFIX = "PAAS-F-"
LOCK_FILE = "/run/lock/paas-firewall.lock"
RESOLV_FILES = ("/etc/resolv.conf", "/run/systemd/resolve/resolv.conf")


class FirewallError(Exception):
    """The rules could not be read or installed; the message says what to do."""


@dataclass(frozen=True)
class Allowed:
    """A destination let through: a network, and optionally one port (TCP and UDP)."""

    network: str
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> Allowed:
        """``10.1.2.3``, ``10.1.0.0/16`` or ``10.1.2.3:5432``."""
        address, _, port = text.strip().partition(":")
        try:
            network = str(ipaddress.ip_network(address, strict=False))
            number = int(port) if port else None
        except ValueError as e:
            raise FirewallError(f"{text!r} is not an address, network or address:port to "
                                "allow: write 10.1.2.3, 10.1.0.0/16 or 10.1.2.3:5432.") from e
        if number is not None and not 0 < number < 65536:
            raise FirewallError(f"{text!r}: the port must be between 1 and 65535.")
        return cls(network, number)


@dataclass(frozen=True)
class Policy:
    """What containers on one network may reach."""

    deny: tuple[str, ...]  # networks refused (after the allowed ones)
    allow: tuple[Allowed, ...] = ()
    resolvers: tuple[str, ...] = ()  # DNS servers Docker's embedded DNS forwards to
    ports: tuple[int, ...] | None = None  # None: any port outside ``deny``

    @classmethod
    def from_settings(cls, deny: str, allow: str, resolvers: Sequence[str],
                      ports: str | None = None) -> Policy:
        denied = []
        for item in _items(deny):
            try:
                denied.append(str(ipaddress.ip_network(item, strict=False)))
            except ValueError as e:
                raise FirewallError(f"{item!r} in the denied networks is not a network: "
                                    "write CIDRs such as 10.0.0.0/8.") from e
        allowed = tuple(Allowed.parse(item) for item in _items(allow))
        open_ports = None if ports is None else tuple(int(p) for p in _items(ports))
        return cls(tuple(denied), allowed, tuple(resolvers), open_ports)


def _items(text: str) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def chain_names(bridge: str) -> tuple[str, str]:
    """The input and forward chains of a bridge (``br-0123456789ab`` or ``docker0``)."""
    tag = bridge.removeprefix("br-")[:16]
    return INPUT_PREFIX + tag, FORWARD_PREFIX + tag


def render(bridge: str, policy: Policy) -> str:
    """The ``iptables-restore --noflush`` text that (re)writes the bridge's two chains."""
    chain_in, chain_fwd = chain_names(bridge)
    reject = "-j REJECT --reject-with icmp-port-unreachable"
    lines = ["*filter", f":{chain_in} - [0:0]", f":{chain_fwd} - [0:0]",
             f"-A {chain_in} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
             *_allowing(chain_in, policy.allow),
             f"-A {chain_in} -p tcp -j REJECT --reject-with tcp-reset",
             f"-A {chain_in} {reject}",
             f"-A {chain_fwd} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"]
    for resolver in policy.resolvers:
        for proto in ("udp", "tcp"):
            lines.append(f"-A {chain_fwd} -d {resolver} -p {proto} --dport 53 -j RETURN")
    lines.extend(_allowing(chain_fwd, policy.allow))
    for network in policy.deny:
        lines.append(f"-A {chain_fwd} -d {network} -p tcp -j REJECT --reject-with tcp-reset")
        lines.append(f"-A {chain_fwd} -d {network} {reject}")
    if policy.ports is not None:
        for port in policy.ports:
            lines.append(f"-A {chain_fwd} -p tcp --dport {port} -j RETURN")
        lines.append(f"-A {chain_fwd} -p tcp -j REJECT --reject-with tcp-reset")
        lines.append(f"-A {chain_fwd} {reject}")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _allowing(chain: str, allow: Iterable[Allowed]) -> list[str]:
    """Rules letting through what an operator allowed: on the forward chain, a company
    service; on the input chain, one of the host's own (the router's address, so apps of one
    host call each other by their routes)."""
    lines = []
    for allowed in allow:
        if allowed.port is None:
            lines.append(f"-A {chain} -d {allowed.network} -j RETURN")
            continue
        for proto in ("tcp", "udp"):
            lines.append(f"-A {chain} -d {allowed.network} -p {proto} --dport {allowed.port} "
                         "-j RETURN")
    return lines


def jumps(bridge: str) -> list[tuple[str, list[str]]]:
    """The rules that send a bridge's traffic to its chains: (built-in chain, rule)."""
    chain_in, chain_fwd = chain_names(bridge)
    return [("INPUT", ["-i", bridge, "-j", chain_in]),
            ("DOCKER-USER", ["-i", bridge, "-j", chain_fwd])]


def host_resolvers(files: Iterable[str] = RESOLV_FILES) -> list[str]:
    """The DNS servers Docker's embedded DNS forwards to: those of the host's resolv.conf,
    or of systemd-resolved's upstream file when the host's points at loopback only."""
    for path in files:
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        servers = re.findall(r"^\s*nameserver\s+(\S+)", text, re.MULTILINE)
        usable = [s for s in servers if _is_ipv4(s) and not ipaddress.ip_address(s).is_loopback]
        if usable:
            return usable
    return []


def _is_ipv4(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 4
    except ValueError:
        return False


Runner = Callable[..., subprocess.CompletedProcess]


@dataclass
class Firewall:
    """Installs and removes the chains of platform bridges (needs root and iptables)."""

    run: Runner = subprocess.run
    lock_file: str = LOCK_FILE
    # Rules written less than this long ago are taken as still there; older ones are written
    # again, so rules someone flushed (a firewall reload) come back within this time.
    recheck_seconds: float = 30.0
    clock: Callable[[], float] = time.monotonic
    _applied: dict[str, tuple[str, float]] = field(default_factory=dict)

    def apply(self, bridge: str, policy: Policy) -> None:
        text = render(bridge, policy)
        done = self._applied.get(bridge)
        if done is not None and done[0] == text and self.clock() - done[1] < self.recheck_seconds:
            return
        with self._lock():
            self._call(["iptables-restore", "--noflush", "--wait"], stdin=text)
            for builtin, rule in jumps(bridge):
                if self._call(["iptables", "-w", "-C", builtin, *rule], check=False) != 0:
                    self._call(["iptables", "-w", "-I", builtin, "1", *rule])
        self._applied[bridge] = (text, self.clock())

    def remove(self, bridge: str) -> None:
        """Take the bridge's jumps and chains away (its network is gone)."""
        with self._lock():
            for builtin, rule in jumps(bridge):
                while self._call(["iptables", "-w", "-D", builtin, *rule], check=False) == 0:
                    pass
            for chain in chain_names(bridge):
                self._call(["iptables", "-w", "-F", chain], check=False)
                self._call(["iptables", "-w", "-X", chain], check=False)
        self._applied.pop(bridge, None)

    def _call(self, argv: list[str], *, stdin: str | None = None, check: bool = True) -> int:
        try:
            proc = self.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise FirewallError(f"could not run {argv[0]} ({e}): the agent and the stager "
                                "need iptables and root to keep containers apart; install "
                                "iptables, or set PAAS_NETWORK_ISOLATION=false to run "
                                "without network isolation.") from e
        if check and proc.returncode != 0:
            raise FirewallError(f"{' '.join(argv[:3])} failed ({proc.stderr.strip()}): the "
                                "agent and the stager need root and a working iptables to "
                                "keep containers apart, or PAAS_NETWORK_ISOLATION=false.")
        return proc.returncode

    def _lock(self) -> FileLock:
        return FileLock(self.lock_file)


class FileLock:
    """One writer of the host's rules at a time (agents and stagers of several platforms)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> FileLock:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
