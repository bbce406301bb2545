"""Routes and domains: who may map what, and the route table the router serves.

Rules (as Cloud Foundry's, where the issue was silent):

- A shared domain is every team's; only an admin makes one. Routes under it need a hostname
  (nobody takes the bare shared domain), and a wildcard hostname under it is an admin's.
- A private domain is one team's: only that team maps routes under it, with any hostname,
  none (the domain itself) or ``*``.
- A route (hostname, domain, path) is mapped to one app at a time; mapping it to another app
  is a conflict until it is unmapped. Unmapping deletes the route.
- A new app gets ``<name>.<platform domain>`` unless pushed with no route.

After every change the caller commits and calls :func:`publish`, which writes the whole table
(with the certificates) to Redis for the router.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from contracts import routing
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

def find_domain(session: Session, name: str) -> Domain:
    domain = session.scalar(select(Domain).where(Domain.name == validate_domain(name)))
    if domain is None:
        raise NotFound(f"there is no domain {name!r}: 'paas domains' lists them, and "
                       "'paas create-domain' adds one.")
    return domain


def visible_domains(session: Session, ident: Identity) -> list[Domain]:
    query = select(Domain).order_by(Domain.name)
    domains = session.scalars(query).all()
    return [d for d in domains if ident.is_admin or d.shared or d.team_id == ident.team_id]


def create_domain(session: Session, ident: Identity, name: str, *, shared: bool) -> Domain:
    name = validate_domain(name)
    if shared and not ident.is_admin:
        raise Forbidden("only platform admins may add a shared domain: add a private one "
                        "for your team without --shared.")
    existing = session.scalar(select(Domain).where(Domain.name == name))
    if existing is not None:
        raise Conflict(f"the domain {name} exists already.")
    # A name under another team's private domain belongs to that team.
    for other in session.scalars(select(Domain).where(Domain.team_id.is_not(None))):
        if name.endswith("." + other.name) and other.team_id != ident.team_id:
            raise Forbidden(f"{name} is under {other.name}, a domain of another team.")
    taken = [r for r in session.scalars(select(Route)) if r.host == name
             and r.team_id != ident.team_id]
    if taken:
        raise Conflict(f"{name} is a route of another team's app already.")
    domain = Domain(name=name, team_id=None if shared else ident.team_id)
    session.add(domain)
    return domain


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
        raise Forbidden(f"{domain.name} is a domain of another team.")


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
        raise Forbidden(f"{domain.name} is a domain of another team: map routes under a "
                        "shared domain or one of your team's.")


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
    domain = find_domain(session, domain_name)
    hostname, path = validate_hostname(hostname), validate_path(path)
    _check_may_route(ident, domain, hostname)
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
    route = Route(domain=domain, hostname=hostname, path=path, app=app, team_id=app.team_id,
                  balance=validate_balance(balance),
                  https_redirect=bool(https_redirect))
    session.add(route)
    return route, True


def unmap_route(session: Session, app: App, domain_name: str, hostname: str | None = None,
                path: str | None = None) -> Route:
    domain = find_domain(session, domain_name)
    hostname, path = validate_hostname(hostname), validate_path(path)
    route = find_route(session, domain, hostname, path)
    shown = (f"{hostname}.{domain.name}" if hostname else domain.name) + path
    if route is None or route.app_id != app.id:
        raise NotFound(f"app {app.name!r} has no route {shown}: 'paas routes' lists them.")
    session.delete(route)
    return route


def split_url(session: Session, url: str) -> tuple[str, str, str]:
    """``"api.example.com/v1"`` -> (domain, hostname, path), with the longest known domain
    that the host is or ends with (as a manifest's ``routes`` are read)."""
    text = url.strip()
    for scheme in ("http://", "https://"):
        if text.lower().startswith(scheme):
            text = text[len(scheme):]
    host, slash, path = text.partition("/")
    host = host.lower().rstrip(".")
    if ":" in host:
        raise InvalidInput(f"the route {url!r} has a port: routes are names (and paths); "
                           "the router's port is the platform's.")
    names = set(session.scalars(select(Domain.name)))
    if host in names:
        return host, "", slash + path
    first, dot, rest = host.partition(".")
    if dot and rest in names:
        return rest, first, slash + path
    raise InvalidInput(f"no domain of the platform holds {host!r} (from route {url!r}): "
                       "'paas domains' lists them; add yours with 'paas create-domain'.")


def default_route(session: Session, ident: Identity, app: App, platform_domain: str) -> Route:
    """``<name>.<platform domain>``, mapped to a new app; a clear conflict if taken."""
    domain = find_domain(session, platform_domain)
    route = find_route(session, domain, app.name, "")
    if route is not None:
        raise Conflict(f"the route {route.url} is mapped to app {route.app.name!r}: push "
                       "with another name, or with --no-route and map one with 'paas "
                       "map-route'.")
    return map_route(session, ident, app, domain.name, app.name)[0]


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


def set_certificate(session: Session, domain: Domain, cert_pem: str, key_pem: str) -> bool:
    """Store (or replace) the domain's certificate; True if it is new."""
    facts = parse_certificate(domain.name, cert_pem, key_pem)
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
    certs = [routing.Certificate(domain=c.domain.name, cert_pem=c.cert_pem, key_pem=c.key_pem)
             for c in session.scalars(select(Certificate).order_by(Certificate.id))]
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
