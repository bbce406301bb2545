"""The JSON API under /v1. Views are thin: they parse, authorize, call the domain, present."""

from __future__ import annotations

import logging

import sqlalchemy.exc
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from contracts.secretbox import SecretBoxError
from controller.auth import Permission, enforce, identify
from controller.errors import ControllerError, InvalidInput

log = logging.getLogger("paas.controller")

v1 = Blueprint("v1", __name__, url_prefix="/v1")


@v1.before_request
def _authenticate() -> None:
    """The one check every endpoint passes first: its declared permission (see
    :mod:`controller.auth`); the lookup of the object it acts on finishes it."""
    view = current_app.view_functions.get(request.endpoint or "")
    g.permission = getattr(view, "permission", None)
    enforce(None, g.permission)  # an endpoint without a declaration is nobody's
    if g.permission == Permission.PUBLIC:
        return
    g.identity = identify(g.db)
    enforce(g.identity, g.permission)
    # Give the connection back to the pool now: a request that then reads a slow client's
    # upload (a gevent worker waits up to api_io_timeout per read) must not hold one.
    g.db.rollback()


@v1.after_request
def _stream_position(response: Response) -> Response:
    """A change to an app answers with ``stream_id``: where to follow the app's event stream
    from (``g.stream_from``, taken by the app's lookup before the change) to see it happen."""
    start = g.get("stream_from")
    if start is None or not 200 <= response.status_code < 300 or not response.is_json:
        return response
    body = response.get_json(silent=True)
    if isinstance(body, dict) and "stream_id" not in body:
        body["stream_id"] = start
        response.set_data(current_app.json.dumps(body))
    return response


def json_body() -> dict[str, object]:
    """The request's JSON object ({} without a body); a 400 for any other JSON."""
    body = request.get_json(silent=True)
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object.")
    return body


def error_body(message: str, detail: object = None) -> dict[str, object]:
    body: dict[str, object] = {"error": message}
    if detail is not None:
        body["detail"] = detail
    return body


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ControllerError)
    def _domain(e: ControllerError):
        return jsonify(error_body(e.message, e.detail)), e.status

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(e: RequestEntityTooLarge):
        limit = app.config.get("MAX_CONTENT_LENGTH") or 0
        return jsonify(error_body(
            f"the upload is larger than the controller accepts ({limit // (1024 * 1024)} MiB): "
            "add what need not be deployed to .paasignore."
        )), 413

    @app.errorhandler(sqlalchemy.exc.TimeoutError)
    def _pool_busy(e: sqlalchemy.exc.TimeoutError):
        log.warning("no database connection free: %s", e)
        response = jsonify(error_body("the controller is too busy to reach its database "
                                      "right now: try again in a few seconds."))
        response.headers["Retry-After"] = "5"
        return response, 503

    @app.errorhandler(HTTPException)
    def _http(e: HTTPException):
        return jsonify(error_body(f"{e.name}: {e.description}")), e.code

    @app.errorhandler(SecretBoxError)
    def _secrets(e: SecretBoxError):
        # The platform's fault, not the caller's: the operator has the sentence in the log.
        log.error("%s %s: %s", request.method, request.path, e)
        return jsonify(error_body(
            "the controller cannot open the secrets it keeps (its secret key is missing or not "
            "the one they were sealed with): tell the platform's operators; the controller's "
            "log says what to do.")), 503

    @app.errorhandler(Exception)
    def _unknown(e: Exception):
        log.exception("unhandled error in %s %s", request.method, request.path)
        return jsonify(error_body(
            "the controller failed unexpectedly; its log has the details.")), 500


from controller.api import (  # noqa: E402,F401  (routes register)
    accounts,
    apps,
    buildpacks,
    builds,
    info,
    logs,
    observe,
    openapi,
    routes,
    runtime,
    stream,
    tasks,
)
