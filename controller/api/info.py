"""GET /v1/info: what a CLI needs to know before logging in."""

from __future__ import annotations

from flask import current_app, jsonify

from controller.api import v1
from controller.auth import Permission, requires


@v1.get("/info")
@requires(Permission.PUBLIC)
def info():
    settings = current_app.config["PAAS_SETTINGS"]
    return jsonify({"name": "paas", "api_version": 1, "domain": settings.domain,
                    "router_port": settings.router_port})
