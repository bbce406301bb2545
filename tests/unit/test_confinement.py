"""Networks, firewall rules and limits of app containers (rules rendered, commands recorded)."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from confinement.firewall import Allowed, Firewall, FirewallError, Policy, host_resolvers, render
from confinement.networks import NetworkError, free_subnet, network_name
from contracts.settings import load
from dea_agent.instances import confinement, cpu_shares

DENY = "10.0.0.0/8,169.254.0.0/16"


def _rules(text: str, chain: str) -> list[str]:
    return [line.removeprefix(f"-A {chain} ") for line in text.splitlines()
            if line.startswith(f"-A {chain} ")]


def test_a_bridge_lets_in_only_replies_to_the_host():
    text = render("br-0123456789ab", Policy.from_settings(DENY, "", []))
    assert text.startswith("*filter\n:PAAS-I-0123456789ab - [0:0]\n")
    assert text.endswith("COMMIT\n")
    assert _rules(text, "PAAS-I-0123456789ab") == [
        "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        "-p tcp -j REJECT --reject-with tcp-reset",
        "-j REJECT --reject-with icmp-port-unreachable"]


def test_what_an_operator_allows_reaches_the_host_too():
    text = render("br-0123456789ab", Policy.from_settings(DENY, "192.0.2.10:8080", []))
    assert _rules(text, "PAAS-I-0123456789ab")[1:4] == [
        "-d 192.0.2.10/32 -p tcp --dport 8080 -j RETURN",
        "-d 192.0.2.10/32 -p udp --dport 8080 -j RETURN",
        "-p tcp -j REJECT --reject-with tcp-reset"]


def test_forwarded_traffic_allows_dns_and_allowed_networks_before_refusing_denied_ones():
    policy = Policy.from_settings(DENY, "10.1.2.3:5432, 10.9.0.0/16", ["10.255.255.53"])
    rules = _rules(render("br-0123456789ab", policy), "PAAS-F-0123456789ab")
    assert rules[0] == "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"
    order = [r for r in rules if "-d " in r]
    assert order == [
        "-d 10.255.255.53 -p udp --dport 53 -j RETURN",
        "-d 10.255.255.53 -p tcp --dport 53 -j RETURN",
        "-d 10.1.2.3/32 -p tcp --dport 5432 -j RETURN",
        "-d 10.1.2.3/32 -p udp --dport 5432 -j RETURN",
        "-d 10.9.0.0/16 -j RETURN",
        "-d 10.0.0.0/8 -p tcp -j REJECT --reject-with tcp-reset",
        "-d 10.0.0.0/8 -j REJECT --reject-with icmp-port-unreachable",
        "-d 169.254.0.0/16 -p tcp -j REJECT --reject-with tcp-reset",
        "-d 169.254.0.0/16 -j REJECT --reject-with icmp-port-unreachable"]
    assert not any("--dport 80 " in r for r in rules)  # apps reach any public port


def test_staging_reaches_only_the_package_ports_once_denied_networks_are_refused():
    policy = Policy.from_settings(DENY, "", [], ports="80,443")
    rules = _rules(render("br-0123456789ab", policy), "PAAS-F-0123456789ab")
    assert rules[-4:] == ["-p tcp --dport 80 -j RETURN", "-p tcp --dport 443 -j RETURN",
                          "-p tcp -j REJECT --reject-with tcp-reset",
                          "-j REJECT --reject-with icmp-port-unreachable"]
    assert rules.index("-d 10.0.0.0/8 -p tcp -j REJECT --reject-with tcp-reset") < \
        rules.index("-p tcp --dport 443 -j RETURN")


@pytest.mark.parametrize("bad", ["10.1.2.300", "db.internal:5432", "10.1.2.3:0",
                                 "10.1.2.3:http"])
def test_an_allowed_entry_that_is_no_address_is_refused_with_the_form_to_use(bad: str):
    with pytest.raises(FirewallError, match="write 10.1.2.3, 10.1.0.0/16 or 10.1.2.3:5432|"
                                            "between 1 and 65535"):
        Allowed.parse(bad)


def test_a_denied_entry_that_is_no_network_is_refused():
    with pytest.raises(FirewallError, match="'nowhere' in the denied networks"):
        Policy.from_settings("10.0.0.0/8,nowhere", "", [])


class Recorder:
    """Stands in for subprocess.run: records the commands, answers -C with ``present``."""

    def __init__(self, present: bool = False, fail: str = "") -> None:
        self.calls: list[tuple[list[str], str | None]] = []
        self.present, self.fail = present, fail

    def __call__(self, argv: list[str], input: str | None = None,
                 **_: Any) -> subprocess.CompletedProcess:
        self.calls.append((argv, input))
        if self.fail and argv[0] == self.fail:
            return subprocess.CompletedProcess(argv, 1, "", "Permission denied (you must be "
                                               "root)")
        code = 0 if "-C" not in argv or self.present else 1
        return subprocess.CompletedProcess(argv, code, "", "")


def test_applying_writes_the_chains_in_one_restore_then_adds_missing_jumps(tmp_path):
    run = Recorder()
    firewall = Firewall(run=run, lock_file=str(tmp_path / "lock"))
    policy = Policy.from_settings(DENY, "", [])
    firewall.apply("br-0123456789ab", policy)
    commands = [argv for argv, _ in run.calls]
    assert commands[0] == ["iptables-restore", "--noflush", "--wait"]
    assert run.calls[0][1] == render("br-0123456789ab", policy)
    assert ["iptables", "-w", "-I", "INPUT", "1", "-i", "br-0123456789ab", "-j",
            "PAAS-I-0123456789ab"] in commands
    assert ["iptables", "-w", "-I", "DOCKER-USER", "1", "-i", "br-0123456789ab", "-j",
            "PAAS-F-0123456789ab"] in commands
    firewall.apply("br-0123456789ab", policy)  # the same rules: nothing to do
    assert len(run.calls) == len(commands)


def test_rules_are_written_again_once_they_may_have_been_flushed(tmp_path):
    now = [100.0]
    run = Recorder(present=True)
    firewall = Firewall(run=run, lock_file=str(tmp_path / "lock"), clock=lambda: now[0])
    policy = Policy.from_settings(DENY, "", [])
    firewall.apply("br-0123456789ab", policy)
    firewall.apply("br-0123456789ab", policy)
    assert [argv[0] for argv, _ in run.calls].count("iptables-restore") == 1
    now[0] += firewall.recheck_seconds
    firewall.apply("br-0123456789ab", policy)
    assert [argv[0] for argv, _ in run.calls].count("iptables-restore") == 2


def test_applying_again_after_a_restart_keeps_existing_jumps(tmp_path):
    run = Recorder(present=True)
    Firewall(run=run, lock_file=str(tmp_path / "lock")).apply(
        "br-0123456789ab", Policy.from_settings(DENY, "", []))
    assert not any("-I" in argv for argv, _ in run.calls)


def test_without_root_or_iptables_the_error_says_how_to_run(tmp_path):
    firewall = Firewall(run=Recorder(fail="iptables-restore"), lock_file=str(tmp_path / "l"))
    with pytest.raises(FirewallError, match="PAAS_NETWORK_ISOLATION=false"):
        firewall.apply("br-0123456789ab", Policy.from_settings(DENY, "", []))

    def missing(argv: list[str], **_: Any) -> subprocess.CompletedProcess:
        raise FileNotFoundError(2, "No such file or directory", argv[0])

    with pytest.raises(FirewallError, match="install iptables"):
        Firewall(run=missing, lock_file=str(tmp_path / "l")).apply(
            "br-0123456789ab", Policy.from_settings(DENY, "", []))


def test_the_resolvers_are_the_hosts_unless_it_points_at_loopback(tmp_path):
    local = tmp_path / "resolv.conf"
    local.write_text("nameserver 127.0.0.53\noptions edns0\n")
    upstream = tmp_path / "upstream.conf"
    upstream.write_text("# from systemd\nnameserver 10.0.0.2\nnameserver fe80::1\n")
    assert host_resolvers([str(local), str(upstream)]) == ["10.0.0.2"]
    local.write_text("nameserver 192.0.2.53\n")
    assert host_resolvers([str(local), str(upstream)]) == ["192.0.2.53"]


def test_subnets_are_the_first_free_slash_24_of_the_pool():
    assert free_subnet("10.213.0.0/16", []) == "10.213.0.0/24"
    assert free_subnet("10.213.0.0/16", ["172.17.0.0/16", "10.213.0.0/24", "10.213.1.0/25"]) \
        == "10.213.2.0/24"
    with pytest.raises(NetworkError, match="every /24 of the network pool 10.213.0.0/23"):
        free_subnet("10.213.0.0/23", ["10.213.0.0/23"])


def test_network_names_are_per_platform_and_team():
    assert network_name("p1", "0f6c0f6c-aaaa-bbbb") == "paas-p1-team-0f6c0f6c-aaa"
    assert network_name("p1", "staging") == "paas-p1-staging"
    assert network_name("p1", "") == "paas-p1-team-none"


def test_cpu_weight_follows_memory_and_runtime_and_network_are_passed_on():
    settings = load(env={})
    assert cpu_shares(1024, settings) == 1024 and cpu_shares(256, settings) == 256
    assert cpu_shares(1, settings) == 2  # Docker's least
    how = confinement(512, settings, "paas-p1-team-x", "runsc")
    assert how["network"] == "paas-p1-team-x" and how["runtime"] == "runsc"
    assert how["cpu_shares"] == 512 and how["pids_limit"] and how["cap_drop"] == ["ALL"]
    plain = confinement(512, settings)
    assert "network" not in plain and "runtime" not in plain


def test_the_runtime_is_the_teams_then_the_apps_then_the_platforms():
    settings = load(env={"PAAS_CONTAINER_RUNTIME_TEAMS": "untrusted=runsc",
                         "PAAS_CONTAINER_RUNTIME_APPS": "sandboxed=runsc, api=runc"})
    assert settings.runtime_for("untrusted", "api") == "runsc"
    assert settings.runtime_for("default", "sandboxed") == "runsc"
    assert settings.runtime_for("default", "api") == ""
    assert settings.runtime_for("default", "other") == ""
    assert load(env={"PAAS_CONTAINER_RUNTIME": "runsc"}).runtime_for("t", "a") == "runsc"
