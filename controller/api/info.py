"""GET /v1/info: what a CLI needs to know before logging in."""

from __future__ import annotations

from flask import current_app, jsonify

from controller.api import v1


@v1.get("/info")
def info():  # noqa: ANN201
    settings = current_app.config["PAAS_SETTINGS"]
    return jsonify({"name": "paas", "api_version": 1, "domain": settings.domain,
                    "router_port": settings.router_port})


@v1.get("/whoami")
def whoami():  # noqa: ANN201
    from controller.auth import current_identity

    ident = current_identity()
    return jsonify({"name": ident.name, "role": ident.role})
