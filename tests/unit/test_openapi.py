"""The OpenAPI document (controller/api/openapi.yaml) stays true to the Flask app: every route is
documented and nothing else, each operation is named for its endpoint and declares the
permission the endpoint enforces, the document is valid OpenAPI, and /v1/openapi.json serves it
without a token."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import schemathesis
import yaml

from contracts.settings import load
from controller import auth
from controller.admin import migrate
from controller.api.openapi import DOCUMENT
from controller.app import create_app
from tests.unit.fakes import FakeCelery, FakeRedis

METHODS = ("get", "put", "post", "delete", "patch")
PERMISSIONS = {"public", "self", "app.read", "app.logs", "app.env", "app.write", "team.read",
               "team.manage", "platform.admin"}
STREAMS = {"v1.app_logs", "v1.build_log", "v1.task_log"}


@pytest.fixture(scope="module")
def doc() -> dict:
    return yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The controller's Flask app on an empty platform (no token: the routes are what count)."""
    settings = load(env={}, data_dir=str(tmp_path_factory.mktemp("openapi")), router_port=8080)
    migrate(settings)
    app = create_app(settings, TESTING=True, REDIS=FakeRedis(), CELERY=FakeCelery())
    yield app
    app.extensions["paas.engine"].dispose()


def openapi_path(rule: str) -> str:
    """``/v1/apps/<name>/releases/<int:version>`` -> ``/v1/apps/{name}/releases/{version}``."""
    return re.sub(r"<(?:[a-z_]+:)?([A-Za-z_][A-Za-z0-9_]*)>", r"{\1}", rule)


def flask_operations(app) -> dict[tuple[str, str], str]:
    """(method, OpenAPI path) -> endpoint of every route under /v1."""
    found = {}
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/v1/"):
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            found[(method.lower(), openapi_path(rule.rule))] = rule.endpoint
    return found


def documented(doc: dict) -> dict[tuple[str, str], dict]:
    return {(method, path): op for path, item in doc["paths"].items()
            for method, op in item.items() if method in METHODS}


def test_every_route_is_documented_and_every_documented_operation_is_a_route(app, doc):
    routes, ops = flask_operations(app), documented(doc)
    missing = sorted(f"{m.upper()} {p}" for m, p in set(routes) - set(ops))
    extra = sorted(f"{m.upper()} {p}" for m, p in set(ops) - set(routes))
    assert not missing, f"routes missing from openapi.yaml: {missing}"
    assert not extra, f"openapi.yaml documents operations the app does not have: {extra}"


def test_each_operation_id_is_its_flask_endpoint(app, doc):
    routes = flask_operations(app)
    wrong = {f"{m.upper()} {p}": (op.get("operationId"), routes[(m, p)])
             for (m, p), op in documented(doc).items()
             if (m, p) in routes and op.get("operationId") != routes[(m, p)]}
    assert not wrong, f"operationId != endpoint (documented, actual): {wrong}"


def test_each_operation_declares_the_permission_its_endpoint_enforces(app, doc):
    declared = {(m, p): op.get("x-permission") for (m, p), op in documented(doc).items()}
    unknown = {k: v for k, v in declared.items() if v not in PERMISSIONS}
    assert not unknown, f"x-permission missing or not one of {sorted(PERMISSIONS)}: {unknown}"
    if hasattr(auth, "permission_table"):
        table = auth.permission_table(app)
    elif hasattr(auth, "PERMISSIONS"):
        table = dict(auth.PERMISSIONS)
    else:
        pytest.skip("controller.auth has no permission table yet (permission_table or "
                    "PERMISSIONS) to compare x-permission with.")
    routes = flask_operations(app)
    wrong = {f"{m.upper()} {p}": (perm, table.get(routes[(m, p)]))
             for (m, p), perm in declared.items()
             if (m, p) in routes and table.get(routes[(m, p)]) != perm}
    assert not wrong, f"x-permission != the endpoint's permission (documented, actual): {wrong}"


def test_public_operations_need_no_token_and_the_others_a_bearer_one(doc):
    assert doc["security"] == [{"bearer": []}]
    assert doc["components"]["securitySchemes"]["bearer"] == {
        **doc["components"]["securitySchemes"]["bearer"], "type": "http", "scheme": "bearer"}
    for (method, path), op in documented(doc).items():
        public = op["x-permission"] == "public"
        assert (op.get("security") == []) == public, f"{method.upper()} {path}"


def test_every_operation_takes_the_team_header_and_answers_errors_as_json(doc):
    header = {"$ref": "#/components/parameters/Team"}
    assert doc["components"]["parameters"]["Team"]["name"] == "X-Paas-Team"
    error = {"$ref": "#/components/responses/Error"}
    for (method, path), op in documented(doc).items():
        where = f"{method.upper()} {path}"
        assert header in op.get("parameters", []), where
        codes = set(op["responses"])
        assert any(c.startswith("2") for c in codes), where
        for code in codes - {c for c in codes if c.startswith("2")}:
            assert op["responses"][code] == error, f"{where} {code}"
    body = doc["components"]["schemas"]["Error"]
    assert body["required"] == ["error"] and body["properties"]["error"]["type"] == "string"


def test_path_parameters_are_the_routes_variables(doc):
    params = doc["components"]["parameters"]

    def resolve(p: dict) -> dict:
        return params[p["$ref"].rsplit("/", 1)[1]] if "$ref" in p else p

    for (method, path), op in documented(doc).items():
        in_path = {resolve(p)["name"] for p in op.get("parameters", [])
                   if resolve(p)["in"] == "path"}
        assert in_path == set(re.findall(r"{(\w+)}", path)), f"{method.upper()} {path}"


def test_streams_are_documented_as_json_lines(doc):
    for op in documented(doc).values():
        content = op["responses"][next(c for c in op["responses"] if c.startswith("2"))].get(
            "content", {})
        if op["operationId"] in STREAMS:
            assert list(content) == ["application/x-ndjson"], op["operationId"]


def test_push_documents_its_form_fields(doc):
    body = doc["paths"]["/v1/apps/{name}/push"]["post"]["requestBody"]["content"]
    form = body["multipart/form-data"]["schema"]
    assert form["required"] == ["package"]
    assert form["properties"]["package"]["format"] == "binary"
    assert form["properties"]["buildpack"]["format"] == "binary"
    assert {"options", "resources"} <= set(form["properties"])


def test_the_document_is_valid_openapi(doc):
    schema = schemathesis.openapi.from_dict(doc)
    schema.validate()  # against the OpenAPI meta-schema; raises with the place that is wrong
    operations = list(schema.get_all_operations())
    broken = [str(r.err()) for r in operations if not hasattr(r, "ok")]
    assert not broken
    assert len(operations) == len(documented(doc))


def test_openapi_json_serves_the_document_without_a_token(app, doc):
    r = app.test_client().get("/v1/openapi.json")
    assert r.status_code == 200, r.json
    assert r.mimetype == "application/json"
    assert r.json == doc


def test_the_document_ships_with_the_controller_package():
    """An installed (not editable) controller has the file it serves."""
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["package-data"]["controller"]
    relative = DOCUMENT.relative_to(DOCUMENT.parents[1]).as_posix()
    assert any(Path(relative).match(p) for p in patterns), patterns
