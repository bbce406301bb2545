"""Domains, routes and certificates."""

from __future__ import annotations

from flask import current_app, g, jsonify, request
from sqlalchemy import select

from controller import events, routing
from controller.accounts import team_missing
from controller.api import json_body, v1
from controller.api.apps import find_app
from controller.auth import Identity, Permission, authorize, current_identity, requires
from controller.errors import InvalidInput, NotFound
from controller.models import Certificate, Domain, Route, Team


def _redis():
    return current_app.extensions["paas.redis"]


def _text(body: dict, key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidInput(f"{key} must be text.")
    return value


def _commit_and_publish() -> None:
    g.db.commit()
    routing.publish(_redis(), g.db)


def present_domain(domain: Domain) -> dict[str, object]:
    return {"name": domain.name, "shared": domain.shared,
            "team": domain.team.name if domain.team else None,
            "certificate": routing.present_certificate(domain.certificate)
            if domain.certificate else None}


def _own_domain(name: str) -> tuple[Identity, Domain]:
    """The domain ``name`` if the caller may change it (a developer of its team), and the
    caller acting for that team."""
    ident = current_identity()
    domain = routing.find_domain(g.db, name, ident)
    if domain.team is not None:
        authorize(ident, Permission.APP_WRITE, domain.team,
                  missing=routing.domain_missing(domain.name))
        ident = ident.acting_for(domain.team.id)
    routing.check_domain_owner(ident, domain)
    return ident, domain


@v1.get("/domains")
@requires(Permission.SELF)
def list_domains():
    domains = routing.visible_domains(g.db, current_identity())
    return jsonify({"domains": [present_domain(d) for d in domains],
                    "default": current_app.config["PAAS_SETTINGS"].domain})


@v1.post("/domains")
@requires(Permission.APP_WRITE)
def create_domain():
    body = json_body()
    ident = current_identity()
    shared = bool(body.get("shared"))
    if not shared:  # a private domain is the request's team's
        team = g.db.get(Team, ident.request_team())
        authorize(ident, Permission.APP_WRITE, team, missing=team_missing(team.name))
        ident = ident.acting_for(team.id)
    domain = routing.create_domain(g.db, ident, _text(body, "name") or "", shared=shared)
    g.db.flush()
    events.record(g.db, "domain.created", ident.name, domain=domain.name,
                  shared=domain.shared)
    g.db.commit()
    return jsonify(present_domain(domain)), 201


@v1.delete("/domains/<name>")
@requires(Permission.APP_WRITE)
def delete_domain(name: str):
    ident, domain = _own_domain(name)
    routing.delete_domain(g.db, ident, domain, current_app.config["PAAS_SETTINGS"].domain)
    events.record(g.db, "domain.deleted", ident.name, domain=domain.name)
    _commit_and_publish()
    return jsonify({"deleted": domain.name})


@v1.get("/routes")
@requires(Permission.SELF)
def list_routes():
    ident = current_identity()
    query = select(Route).order_by(Route.id)
    if ident.team_named:
        query = query.where(Route.team_id == ident.team_id)
    elif not ident.is_admin:
        query = query.where(Route.team_id.in_(list(ident.roles)))
    routes = sorted(g.db.scalars(query), key=lambda r: (r.host, r.path))
    return jsonify({"routes": [routing.present_route(r) for r in routes]})


@v1.get("/apps/<name>/routes")
@requires(Permission.APP_READ)
def app_routes(name: str):
    app = find_app(name)
    return jsonify({"routes": [routing.present_route(r) for r in app.routes]})


@v1.post("/apps/<name>/routes")
@requires(Permission.APP_WRITE)
def map_route(name: str):
    """Map hostname.domain/path to the app (or change the options of one it has)."""
    app = find_app(name)
    body = json_body()
    ident = current_identity().acting_for(app.team_id)
    redirect = body.get("https_redirect")
    if redirect is not None and not isinstance(redirect, bool):
        raise InvalidInput("https_redirect must be true or false.")
    if body.get("url") is not None:
        domain, hostname, path = routing.split_url(g.db, _text(body, "url") or "", ident)
    else:
        domain, hostname, path = (_text(body, "domain") or "", _text(body, "hostname"),
                                  _text(body, "path"))
    route, created = routing.map_route(
        g.db, ident, app, domain, hostname, path, balance=_text(body, "balance"),
        https_redirect=redirect)
    g.db.flush()
    events.record(g.db, "route.mapped" if created else "route.updated", ident.name, app,
                  route=route.url, balance=route.balance,
                  https_redirect=route.https_redirect)
    _commit_and_publish()
    return jsonify(routing.present_route(route)), 201 if created else 200


@v1.delete("/apps/<name>/routes")
@requires(Permission.APP_WRITE)
def unmap_route(name: str):
    app = find_app(name)
    args = request.args
    route = routing.unmap_route(g.db, current_identity().acting_for(app.team_id), app,
                                args.get("domain", ""), args.get("hostname"), args.get("path"))
    url = route.url
    events.record(g.db, "route.unmapped", current_identity().name, app, route=url)
    _commit_and_publish()
    return jsonify({"unmapped": url})


@v1.get("/certificates")
@requires(Permission.SELF)
def list_certificates():
    ident = current_identity()
    certs = [c for c in g.db.scalars(select(Certificate).order_by(Certificate.id))
             if ident.member_of(c.domain.team_id)]
    return jsonify({"certificates": [routing.present_certificate(c) for c in certs]})


@v1.put("/certificates/<domain_name>")
@requires(Permission.APP_WRITE)
def put_certificate(domain_name: str):
    """The certificate (PEM chain) and key HTTPS serves the domain and names under it with."""
    ident, domain = _own_domain(domain_name)
    body = json_body()
    cert, key = _text(body, "cert"), _text(body, "key")
    if not cert or not key:
        raise InvalidInput("give both the certificate and its key (--cert FILE --key FILE).")
    created = routing.set_certificate(g.db, ident, domain, cert, key)
    g.db.flush()
    events.record(g.db, "certificate.created" if created else "certificate.replaced",
                  ident.name, domain=domain.name,
                  fingerprint=domain.certificate.fingerprint)
    _commit_and_publish()
    return jsonify(routing.present_certificate(domain.certificate)), 201 if created else 200


@v1.delete("/certificates/<domain_name>")
@requires(Permission.APP_WRITE)
def delete_certificate(domain_name: str):
    ident, domain = _own_domain(domain_name)
    if domain.certificate is None:
        raise NotFound(f"{domain.name} has no certificate.")
    g.db.delete(domain.certificate)
    events.record(g.db, "certificate.deleted", ident.name, domain=domain.name)
    _commit_and_publish()
    return jsonify({"deleted": domain.name})
