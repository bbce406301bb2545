"""Routes and domains: who may map what, and the route table the router serves.

Rules (as Cloud Foundry's, where the issue was silent):

- A shared domain is every team's; only an admin makes one. Routes under it need a hostname
  (nobody takes the bare shared domain), and a wildcard hostname under it is an admin's.
- A private domain is one team's: only that team maps routes under it, with any hostname,
  none (the domain itself) or ``*``.
- A route (hostname, domain, path) is mapped to one app at a time; mapping it to another app
  is a conflict until it is unmapped. Unmapping deletes the route.
- A new app gets ``<name>.<platform domain>`` unless pushed with no route.

Tenancy (a team must not reach another's names; admins may do anything):

- A host name (``hostname.domain``, all its paths, through any domain row) belongs to the first
  team that maps a route on it; another team's map on it is refused, and so is ``*.D`` while
  another team routes a name under D, and any name equal to or under another team's private
  domain. The refusal names the host, never the other team's apps.
- A private domain may not be, or be above or under, another team's private domain or a host
  name another team routes (taken), nor be above or under a shared domain (a private domain
  under a shared one would pre-register a name every team can push to: only admins make those).
- Another team's private domain is "no domain" (a 404 as for one that does not exist).
- A team's certificate may cover only its own names: each DNS name (wildcards included) under
  one of its private domains, or a host name it routes. The router serves a domain's
  certificate only for hosts of routes under that domain, and those are its team's.

After every change the caller commits and calls :func:`publish`, which writes the whole table
(with the certificates) to Redis for the router.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

import redis
from sqlalchemy import Text, select, type_coerce
from sqlalchemy.orm import Session

from contracts import routing
from controller import quotas
from controller.auth import Identity
from controller.errors import Conflict, Forbidden, InvalidInput, NotFound
from controller.models import App, Certificate, Domain, Route
from controller.models.route import (
    WILDCARD,
    validate_balance,
    validate_domain,
    validate_hostname,
    validate_path,
)

log = logging.getLogger("paas.controller")


# -- domains -----------------------------------------------------------------------------

def domain_missing(name: str) -> str:
    return (f"there is no domain {name!r}: 'paas domains' lists them, and 'paas create-domain' "
            "adds one.")


def may_see_domain(ident: Identity | None, domain: Domain) -> bool:
    """Shared domains are everyone's; a private one exists only for its team's members (and
    admins)."""
    return ident is None or domain.shared or ident.member_of(domain.team_id)


def find_domain(session: Session, name: str, ident: Identity | None = None) -> Domain:
    """The domain ``name``; with ``ident``, another team's private domain is a 404 with the
    words of one that does not exist."""
    domain = session.scalar(select(Domain).where(Domain.name == validate_domain(name)))
    if domain is None or not may_see_domain(ident, domain):
        raise NotFound(domain_missing(name))
    return domain


def visible_domains(session: Session, ident: Identity) -> list[Domain]:
    query = select(Domain).order_by(Domain.name)
    return [d for d in session.scalars(query).all() if may_see_domain(ident, d)]


def _within(name: str, parent: str) -> bool:
    """True if ``name`` is ``parent`` or a name under it (by whole labels)."""
    return name == parent or name.endswith("." + parent)


def _base(host: str) -> str:
    """The name a route's host stands for: ``*.d`` stands for the names under ``d``."""
    return host[2:] if host.startswith(WILDCARD + ".") else host


def _overlaps(name: str, host: str) -> bool:
    """True if the domain ``name`` is, is above or is under the routed ``host``."""
    base = _base(host)
    return _within(base, name) or _within(name, base)


def _taken(name: str) -> Conflict:
    return Conflict(f"{name} is taken by another team: choose another domain (a private "
                    "domain may not be, or be above or under, another team's names).")


def create_domain(session: Session, ident: Identity, name: str, *, shared: bool) -> Domain:
    name = validate_domain(name)
    if shared and not ident.is_admin:
        raise Forbidden("only platform admins may add a shared domain: add a private one "
                        "for your team without --shared.")
    existing = session.scalar(select(Domain).where(Domain.name == name))
    if existing is not None:
        if not may_see_domain(ident, existing):
            raise _taken(name)
        raise Conflict(f"the domain {name} exists already.")
    if not ident.is_admin:
        _check_private_domain(session, ident, name)
    domain = Domain(name=name, team_id=None if shared else ident.team_id)
    session.add(domain)
    return domain


def _check_private_domain(session: Session, ident: Identity, name: str) -> None:
    """Refuse a team's private domain over names it does not own (see the module's rules)."""
    for route in session.scalars(select(Route).where(Route.team_id != ident.team_id)):
        if _overlaps(name, route.host):
            raise _taken(name)
    for other in session.scalars(select(Domain)):
        if other.team_id == ident.team_id:
            continue
        if other.shared and _within(name, other.name):
            raise Forbidden(f"{name} is under the shared domain {other.name}: map a hostname "
                            f"under it instead ('paas map-route APP {other.name} --hostname "
                            "NAME'); only platform admins add domains there.")
        if other.shared and _within(other.name, name):
            raise Forbidden(f"{name} is above the shared domain {other.name}, whose names are "
                            "every team's: choose a domain of your own; only platform admins "
                            "add domains there.")
        if _within(name, other.name) or _within(other.name, name):
            raise _taken(name)


def delete_domain(session: Session, ident: Identity, domain: Domain, platform_domain: str) -> None:
    check_domain_owner(ident, domain)
    if domain.name == platform_domain:
        raise Conflict(f"{domain.name} is the platform's default domain (PAAS_DOMAIN); it "
                       "cannot be deleted.")
    used = session.scalars(select(Route).where(Route.domain_id == domain.id)).all()
    if used:
        apps = sorted({r.app.name for r in used})
        raise Conflict(f"{len(used)} route(s) under {domain.name} are mapped (apps: "
                       f"{', '.join(apps)}): unmap them first.")
    session.delete(domain)


def check_domain_owner(ident: Identity, domain: Domain) -> None:
    if ident.is_admin:
        return
    if domain.shared:
        raise Forbidden(f"{domain.name} is a shared domain: only platform admins change it.")
    if domain.team_id != ident.team_id:
        raise NotFound(domain_missing(domain.name))


# -- routes ------------------------------------------------------------------------------

def _check_may_route(ident: Identity, domain: Domain, hostname: str) -> None:
    if domain.shared:
        if not hostname:
            raise InvalidInput(f"{domain.name} is a shared domain: give a hostname "
                               "(--hostname NAME) for a route under it.")
        if hostname == WILDCARD and not ident.is_admin:
            raise Forbidden(f"only platform admins may map a wildcard route under the "
                            f"shared domain {domain.name}: add a private domain instead.")
    elif domain.team_id != ident.team_id and not ident.is_admin:
        raise NotFound(domain_missing(domain.name))


def _check_host_free(session: Session, team_id: int, domain: Domain, hostname: str) -> None:
    """Refuse a host name (any path) another team owns: one it routes, one equal to or under
    its private domain, or for ``*``, a name under the domain that it routes or its private
    domain under this one (nginx's ``*.d`` catches names of every depth under d)."""
    host = f"{hostname}.{domain.name}" if hostname else domain.name
    name = domain.name if hostname == WILDCARD else host
    taken = Conflict(f"{host} is taken by another team: choose another hostname.")
    for other in session.scalars(select(Domain).where(Domain.team_id.is_not(None),
                                                      Domain.team_id != team_id)):
        if _within(name, other.name) or (hostname == WILDCARD and _within(other.name, name)):
            raise taken
    for route in session.scalars(select(Route).where(Route.team_id != team_id)):
        if route.host == host or (hostname == WILDCARD and _within(_base(route.host), name)):
            raise taken


def find_route(session: Session, domain: Domain, hostname: str, path: str) -> Route | None:
    return session.scalar(select(Route).where(
        Route.domain_id == domain.id, Route.hostname == hostname, Route.path == path))


def map_route(
    session: Session,
    ident: Identity,
    app: App,
    domain_name: str,
    hostname: str | None = None,
    path: str | None = None,
    *,
    balance: str | None = None,
    https_redirect: bool | None = None,
) -> tuple[Route, bool]:
    """Map (hostname.domain/path) to ``app``; returns the route and whether it is new.

    Mapping a route the app has already changes only the options given.
    """
    domain = find_domain(session, domain_name, ident)
    hostname, path = validate_hostname(hostname), validate_path(path)
    _check_may_route(ident, domain, hostname)
    if not ident.is_admin:
        _check_host_free(session, ident.team_id, domain, hostname)
    route = find_route(session, domain, hostname, path)
    if route is not None:
        if route.app_id != app.id:
            raise Conflict(f"the route {route.url} is mapped to app {route.app.name!r}: unmap "
                           f"it there first ('paas unmap-route {route.app.name} ...').")
        if balance is not None:
            route.balance = validate_balance(balance)
        if https_redirect is not None:
            route.https_redirect = bool(https_redirect)
        return route, False
    # The same name may be reached through another domain row (a private domain that is a
    # hostname under a shared one): one host, one owner.
    full = f"{hostname}.{domain.name}" if hostname else domain.name
    for other in session.scalars(select(Route).where(Route.path == path)):
        if other.host == full and other.app_id != app.id:
            raise Conflict(f"the route {other.url} is mapped to app {other.app.name!r}.")
    quotas.check(session, app.team, routes=1)
    route = Route(domain=domain, hostname=hostname, path=path, app=app, team_id=app.team_id,
                  balance=validate_balance(balance),
                  https_redirect=bool(https_redirect))
    session.add(route)
    return route, True


def unmap_route(session: Session, ident: Identity, app: App, domain_name: str,
                hostname: str | None = None, path: str | None = None) -> Route:
    domain = find_domain(session, domain_name, ident)
    hostname, path = validate_hostname(hostname), validate_path(path)
    route = find_route(session, domain, hostname, path)
    shown = (f"{hostname}.{domain.name}" if hostname else domain.name) + path
    if route is None or route.app_id != app.id:
        raise NotFound(f"app {app.name!r} has no route {shown}: 'paas routes' lists them.")
    session.delete(route)
    return route


def split_url(session: Session, url: str, ident: Identity) -> tuple[str, str, str]:
    """``"api.example.com/v1"`` -> (domain, hostname, path), with the longest domain ``ident``
    sees that the host is or ends with (as a manifest's ``routes`` are read)."""
    text = url.strip()
    for scheme in ("http://", "https://"):
        if text.lower().startswith(scheme):
            text = text[len(scheme):]
    host, slash, path = text.partition("/")
    host = host.lower().rstrip(".")
    if ":" in host:
        raise InvalidInput(f"the route {url!r} has a port: routes are names (and paths); "
                           "the router's port is the platform's.")
    names = {d.name for d in visible_domains(session, ident)}
    if host in names:
        return host, "", slash + path
    first, dot, rest = host.partition(".")
    if dot and rest in names:
        return rest, first, slash + path
    raise InvalidInput(f"no domain of the platform holds {host!r} (from route {url!r}): "
                       "'paas domains' lists them; add yours with 'paas create-domain'.")


def default_route(session: Session, ident: Identity, app: App, platform_domain: str) -> Route:
    """``<name>.<platform domain>``, mapped to a new app. App names are a team's, host names
    the platform's: when another team has that host, ``<name>-<team>.<platform domain>``; a
    clear conflict if both are taken."""
    domain = find_domain(session, platform_domain)
    first = None
    for hostname in (app.name, f"{app.name}-{app.team.name}"):
        if len(hostname) > 63:
            break
        route = find_route(session, domain, hostname, "")
        if route is None:
            try:
                return map_route(session, ident, app, domain.name, hostname)[0]
            except Conflict as e:  # a host under another team's private domain
                first = first or e
                continue
        mine = route.team_id == app.team_id
        owner = (f"mapped to app {route.app.name!r}" if mine or ident.is_admin
                 else "taken by another team")
        first = first or Conflict(f"the route {route.url} is {owner}: push with another "
                                  "name, or with --no-route and map one with 'paas map-route'.")
        if mine:
            break  # the team's own route: its name is the one to change, not the team's
    raise first


def present_route(route: Route) -> dict[str, Any]:
    return {"guid": route.guid, "url": route.url, "host": route.host,
            "hostname": route.hostname, "domain": route.domain.name, "path": route.path,
            "app": route.app.name, "balance": route.balance,
            "https_redirect": route.https_redirect}


# -- certificates --------------------------------------------------------------------------

def parse_certificate(domain: str, cert_pem: str, key_pem: str) -> dict[str, Any]:
    """Check a PEM chain and key for ``domain``: readable, the key is the leaf's, the leaf
    covers the domain or names under it, and it has not expired. Returns what to store."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    try:
        chain = x509.load_pem_x509_certificates(cert_pem.encode())
    except ValueError as e:
        raise InvalidInput(f"the certificate is not a PEM certificate ({e}): give the "
                           "file that starts with '-----BEGIN CERTIFICATE-----'.") from e
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError) as e:
        raise InvalidInput("the key is not an unencrypted PEM private key: give the file "
                           "that starts with '-----BEGIN PRIVATE KEY-----' (decrypt it "
                           "first with 'openssl pkey').") from e
    leaf = chain[0]
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if leaf.public_key().public_bytes(enc, pub) != key.public_key().public_bytes(enc, pub):
        raise InvalidInput("the key does not belong to the certificate (the first one in the "
                           "file): give the key the certificate was made for.")
    names: list[str] = []
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = [n.lower() for n in san.value.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = [a.value.lower() for a in leaf.subject.get_attributes_for_oid(
            x509.NameOID.COMMON_NAME) if isinstance(a.value, str)]
    if not any(_covers(n, domain) for n in names):
        raise InvalidInput(f"the certificate is for {', '.join(names) or 'no DNS name'}, not "
                           f"{domain} or names under it.")
    not_after = leaf.not_valid_after_utc
    if not_after <= dt.datetime.now(dt.UTC):
        raise InvalidInput(f"the certificate expired on {not_after:%Y-%m-%d}: renew it.")
    return {"names": ",".join(names), "not_after": not_after,
            "fingerprint": leaf.fingerprint(hashes.SHA256()).hex()}


def _covers(name: str, domain: str) -> bool:
    """True if certificate name ``name`` serves ``domain`` or a host directly under it."""
    if name == domain:
        return True
    return name.startswith("*.") and name[2:] == domain


def foreign_names(session: Session, ident: Identity, names: list[str]) -> list[str]:
    """The certificate names that are not ``ident``'s team's: a name (or ``*.name``) must be
    one of its private domains or under one, or (exactly) a host name the team routes."""
    if ident.is_admin:
        return []
    own = list(session.scalars(select(Domain.name).where(Domain.team_id == ident.team_id)))
    hosts = {r.host for r in session.scalars(select(Route).where(
        Route.team_id == ident.team_id))}
    foreign = []
    for name in names:
        base = _base(name.rstrip("."))
        if any(_within(base, d) for d in own):
            continue
        if name == base and name in hosts:
            continue
        foreign.append(name)
    return foreign


def set_certificate(session: Session, ident: Identity, domain: Domain, cert_pem: str,
                    key_pem: str) -> bool:
    """Store (or replace) the domain's certificate; True if it is new. Every name it covers
    must be the team's (:func:`foreign_names`)."""
    facts = parse_certificate(domain.name, cert_pem, key_pem)
    foreign = foreign_names(session, ident, [n for n in facts["names"].split(",") if n])
    if foreign:
        raise InvalidInput(
            f"the certificate also covers {', '.join(foreign)}, not your team's: a "
            "certificate may cover only names under your team's private domains and host "
            "names your team routes; get one for those names only.")
    cert = domain.certificate
    created = cert is None
    if cert is None:
        cert = Certificate(domain=domain)
        session.add(cert)
    cert.cert_pem, cert.key_pem = cert_pem, key_pem
    cert.names, cert.not_after, cert.fingerprint = (facts["names"], facts["not_after"],
                                                     facts["fingerprint"])
    return created


def present_certificate(cert: Certificate) -> dict[str, Any]:
    not_after = cert.not_after if cert.not_after.tzinfo else \
        cert.not_after.replace(tzinfo=dt.UTC)
    return {"domain": cert.domain.name, "names": [n for n in cert.names.split(",") if n],
            "not_after": not_after.isoformat(), "fingerprint": cert.fingerprint}


# -- the table the router serves ----------------------------------------------------------

def route_table(session: Session) -> routing.RouteTable:
    """Every mapped route and every certificate, read now (the revision)."""
    revision = time.time_ns()
    routes = [routing.MappedRoute(
        guid=r.guid, host=r.host, domain=r.domain.name, app_guid=r.app.guid,
        app_name=r.app.name, path=r.path, balance=r.balance,
        https_redirect=r.https_redirect)
        for r in session.scalars(select(Route).order_by(Route.id))]
    # The key as stored, sealed with the platform key: the table carries it never opened.
    stored_key = type_coerce(Certificate.key_pem, Text)
    certs = [routing.Certificate(domain=name, cert_pem=cert_pem, fingerprint=fingerprint,
                                 key_sealed=key_sealed)
             for name, cert_pem, fingerprint, key_sealed in session.execute(
                 select(Domain.name, Certificate.cert_pem, Certificate.fingerprint, stored_key)
                 .join(Domain, Certificate.domain_id == Domain.id).order_by(Certificate.id))]
    return routing.RouteTable(revision=revision, routes=routes, certificates=certs)


def publish(client: Any, session: Session) -> bool:
    """Write the table after a committed change. The change is saved either way; if Redis
    is away the health manager writes it once Redis answers."""
    try:
        return routing.write_route_table(client, route_table(session))
    except redis.RedisError as e:
        log.warning("could not write the route table to Redis (the health manager will): %s",
                    e)
        return False


def republish(client: Any, session: Session) -> bool:
    """The health manager's repair: write the table if Redis lacks it or holds another one
    (a write lost while Redis was away). True if it wrote."""
    table = route_table(session)
    try:
        stored = routing.read_route_table(client)
    except ValueError:
        stored = None  # unreadable: replaced
    if stored is not None and (stored.routes, stored.certificates) == \
            (table.routes, table.certificates):
        return False
    return routing.write_route_table(client, table)
