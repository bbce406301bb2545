"""The Docker networks app and staging containers join.

Each team's instances and tasks share a bridge of their own (``paas-<platform>-team-<team>``)
and staging containers one of theirs (``paas-<platform>-staging``). Docker keeps bridges apart
from each other; on each bridge inter-container traffic is off (an instance reaches another,
even of its own team, only through the router, as from outside), and the firewall
(:mod:`confinement.firewall`) keeps its containers off the host and the denied ranges.

Subnets are /24s carved from ``network_pool`` (Docker's own pools hold about 30 networks, too
few for a team each), chosen among those no Docker network of the host uses. Several agents
and stagers, of one platform or several, may make networks on one host at once: a file lock
and Docker's duplicate-name check keep one network per name.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time

import docker
import docker.errors
from docker.models.networks import Network
from docker.types import IPAMConfig, IPAMPool

from confinement.firewall import FileLock, Firewall, FirewallError, Policy, host_resolvers
from contracts.labels import KIND_NETWORK, LABEL_KIND, LABEL_PLATFORM, LABEL_TEAM
from contracts.settings import Settings

log = logging.getLogger("paas.confinement")

STAGING = "staging"
NO_TEAM = "none"  # instances started from messages that name no team
LOCK_FILE = "/run/lock/paas-networks.lock"


class NetworkError(Exception):
    """A network could not be made or filtered; the message says what to do."""


def network_name(platform_id: str, team: str) -> str:
    if team == STAGING:
        return f"paas-{platform_id}-staging"
    return f"paas-{platform_id}-team-{(team or NO_TEAM)[:12]}"


def free_subnet(pool: str, used: list[str]) -> str:
    """The first /24 of ``pool`` that overlaps none of ``used``."""
    taken = [ipaddress.ip_network(u, strict=False) for u in used]
    for candidate in ipaddress.ip_network(pool, strict=False).subnets(new_prefix=24):
        if not any(candidate.overlaps(t) for t in taken):
            return str(candidate)
    raise NetworkError(f"every /24 of the network pool {pool} is in use: give the platform a "
                       "larger pool (PAAS_NETWORK_POOL), or remove unused Docker networks.")


class Networks:
    """Makes and filters the platform's container networks on this host (cached per name)."""

    def __init__(self, settings: Settings, client: docker.DockerClient,
                 firewall: Firewall | None = None) -> None:
        self.settings = settings
        self.docker = client
        self.firewall = firewall or Firewall()
        self._ready: dict[str, float] = {}  # name -> when its network and rules were checked
        self._mutex = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.settings.network_isolation

    def for_team(self, team: str) -> str | None:
        """The network of ``team``'s instances and tasks (None: isolation is off)."""
        return self._ensure(team or NO_TEAM) if self.enabled else None

    def for_staging(self) -> str | None:
        return self._ensure(STAGING) if self.enabled else None

    def policy(self, team: str) -> Policy:
        s = self.settings
        if team == STAGING:
            return Policy.from_settings(s.network_deny, s.staging_allow, host_resolvers(),
                                        ports=s.staging_ports)
        return Policy.from_settings(s.network_deny, s.network_allow, host_resolvers())

    def _ensure(self, team: str) -> str:
        name = network_name(self.settings.platform_id, team)
        if self._fresh(name):
            return name
        with self._mutex:
            if not self._fresh(name):
                try:
                    with FileLock(LOCK_FILE):
                        network = self._find(name) or self._create(name, team)
                    self.firewall.apply(_bridge(network), self.policy(team))
                except FirewallError as e:
                    raise NetworkError(str(e)) from e
                except docker.errors.APIError as e:
                    raise NetworkError(f"Docker could not make the network {name} "
                                       f"({e.explanation or e}).") from e
                self._ready[name] = time.monotonic()
        return name

    def _fresh(self, name: str) -> bool:
        """Checked recently: its network and rules are taken as there (see Firewall)."""
        checked = self._ready.get(name)
        return checked is not None and \
            time.monotonic() - checked < self.firewall.recheck_seconds

    def _find(self, name: str) -> Network | None:
        found = [n for n in self.docker.networks.list(names=[name]) if n.name == name]
        return found[0] if found else None

    def _create(self, name: str, team: str) -> Network:
        used = [config["Subnet"]
                for network in self.docker.networks.list(greedy=True)
                for config in (network.attrs.get("IPAM") or {}).get("Config") or []
                if "Subnet" in config]
        subnet = free_subnet(self.settings.network_pool, used)
        log.info("making network %s (%s)", name, subnet)
        return self.docker.networks.create(
            name, driver="bridge", check_duplicate=True,
            ipam=IPAMConfig(pool_configs=[IPAMPool(
                subnet=subnet, gateway=str(next(ipaddress.ip_network(subnet).hosts())))]),
            options={"com.docker.network.bridge.enable_icc": "false"},
            labels={LABEL_PLATFORM: self.settings.platform_id, LABEL_KIND: KIND_NETWORK,
                    LABEL_TEAM: team})


def _bridge(network: Network) -> str:
    options = network.attrs.get("Options") or {}
    return options.get("com.docker.network.bridge.name") or f"br-{network.id[:12]}"


def remove_networks(client: docker.DockerClient, platform_id: str,
                    firewall: Firewall | None = None) -> None:
    """Remove the platform's networks (their containers gone first) and their rules."""
    firewall = firewall or Firewall()
    for network in client.networks.list(
            filters={"label": [f"{LABEL_PLATFORM}={platform_id}", f"{LABEL_KIND}={KIND_NETWORK}"]}):
        bridge = _bridge(network)
        try:
            network.remove()
        except docker.errors.APIError as e:
            log.warning("could not remove network %s: %s", network.name, e)
            continue
        try:
            firewall.remove(bridge)
        except FirewallError as e:
            log.warning("could not remove the rules of %s: %s", bridge, e)
