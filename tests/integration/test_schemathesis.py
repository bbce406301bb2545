"""schemathesis against the live API: requests made from the OpenAPI document (valid ones and
invalid ones) never get a 5xx, every error is JSON with a sentence in ``error``, and every
answer has the status, content type and body the document gives it.

It acts as a developer of a team of its own (``fuzz``, under a small quota), so what it changes
is that team's: the platform is shared by the whole test session. Half of the requests about an
app name the team's real app (a pushed static site), and half of the team names are the
fuzzer's team, so they get past the lookups. Left out: the platform admins' operations that
change the platform (users, teams, quotas, buildpacks: a developer gets a 403 there, and a bug
in that check must not let a fuzzer delete another test's user), ``logout`` (it would revoke
the fuzzer's own token) and ``login`` (its failures count against 127.0.0.1, the address every
test logs in from). Log requests never follow (a follow has no end); the real app is not
deleted, restaged or given tasks (the rest of the run needs it; staging and tasks would crowd
the shared agents).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import zlib

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from controller.api.openapi import document
from launcher.sandbox import paas_command
from tests.conftest import FIXTURES

LEFT_OUT = [
    "v1.login", "v1.logout",
    "v1.create_user", "v1.delete_user", "v1.set_password",
    "v1.create_team", "v1.delete_team", "v1.set_quota",
    "v1.create_buildpack", "v1.delete_buildpack",
]
# The last character of an error sentence (a sentence may end in a quoted command or a
# parenthesis: "... ('paas teams' lists yours).").
SENTENCE_ENDS = (".", "?", "!", ")", ".'", '."')
TEAM, APP = "fuzz", "fuzz-site"
# What the fuzzer's team may use: scale and task requests that would crowd the shared agents
# are refused with the quota's sentence instead.
QUOTA = {"memory_mb": 1024, "instances": 2, "apps": 3, "routes": 6, "tasks": 1}
EXAMPLES = 15  # per operation and mode: about 2 x 15 x 48 requests in all
# Per request, above the request timeout (15 s), so a request that hangs fails as such.
DEADLINE = dt.timedelta(seconds=20)
SPARED = {("DELETE", "/v1/apps/{name}"), ("POST", "/v1/apps/{name}/restage"),
          ("POST", "/v1/apps/{name}/tasks")}


@pytest.fixture(scope="module")
def fuzzer(platform, tmp_path_factory):
    """A developer's token in the team ``fuzz`` (which nothing else uses), whose app ``APP``
    is pushed and staged (and deleted afterwards, with the domains the run added)."""
    token = platform.create_token("fuzzer", TEAM, role="developer")
    api = platform.settings.api_url
    r = requests.put(f"{api}/v1/teams/{TEAM}/quota", json=QUOTA, timeout=30,
                     headers={"Authorization": f"Bearer {platform.token}"})
    assert r.status_code == 200, r.text
    home = tmp_path_factory.mktemp("fuzzer-home")
    (home / "config").write_text(json.dumps({"target": api, "token": token}))
    pushed = subprocess.run(
        [paas_command(), "push", APP, "-p", str(FIXTURES / "static-site"), "-m", "128M"],
        env={**os.environ, "PAAS_HOME": str(home)}, capture_output=True, text=True,
        timeout=300)
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    yield token
    # What the run made that other tests could trip over: the app (its routes go with it) and
    # the private domains it added (one could sit above a name another test adds later).
    mine = {"Authorization": f"Bearer {token}"}
    requests.delete(f"{api}/v1/apps/{APP}", timeout=30, headers=mine)
    for domain in requests.get(f"{api}/v1/domains", timeout=30, headers=mine).json()["domains"]:
        if domain["team"] == TEAM:
            r = requests.delete(f"{api}/v1/domains/{domain['name']}", timeout=30, headers=mine)
            assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def live_api(platform, fuzzer):
    """The document as the live API serves it, for requests to the live API."""
    config = schemathesis.Config.from_dict({"base-url": platform.settings.api_url,
                                            "request-timeout": 15})
    return schemathesis.openapi.from_url(f"{platform.settings.api_url}/v1/openapi.json",
                                         config=config)


@schemathesis.check
def errors_are_sentences(ctx, response, case) -> None:
    """A 4xx or 5xx is JSON with an "error" that is a sentence (what went wrong, what to do)."""
    if response.status_code < 400:
        return
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"a {response.status_code} that is not JSON: "
                             f"{response.content[:200]!r}") from None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, str) or not error.strip():
        raise AssertionError(f"a {response.status_code} without an \"error\" sentence: {body!r}")
    if not error.rstrip().endswith(SENTENCE_ENDS):
        raise AssertionError(f"a {response.status_code} whose error is not a sentence: {error!r}")


# No 5xx, errors are sentences, and each answer is what the document says (so it stays true).
CHECKS = [not_a_server_error, errors_are_sentences, status_code_conformance,
          content_type_conformance, response_schema_conformance]


def prepare(case: schemathesis.Case) -> None:
    """Make a generated request one the shared platform can take, and one that reaches past
    the lookups (see the module's words)."""
    if case.query and "follow" in case.query:
        case.query = {k: v for k, v in case.query.items() if k != "follow"}
    if case.path.endswith("/stream"):  # the app's events kept, not a follow without end
        case.query = {**(case.query or {}), "follow": "false"}
    params = case.path_parameters or {}
    if case.path.startswith("/v1/apps/{name}") and (case.method, case.path) not in SPARED and \
            _half(case, "app"):
        params["name"] = APP
    if case.path.startswith("/v1/teams/{name}") and _half(case, "team"):
        params["name"] = TEAM
    if "process_type" in params and _half(case, "process"):
        params["process_type"] = "web"
    if case.headers and "X-Paas-Team" in case.headers and _half(case, "header"):
        case.headers["X-Paas-Team"] = TEAM


def _half(case: schemathesis.Case, salt: str) -> bool:
    """True for about half of the requests, chosen by their content (a replay is the same)."""
    seen = repr((salt, case.path_parameters, case.query, case.headers, case.body))
    return zlib.crc32(seen.encode()) % 2 == 1


def fuzzed_operations() -> list[str]:
    """The operationIds to fuzz, from the document the controller serves."""
    return sorted(op["operationId"] for item in document()["paths"].values()
                  for op in item.values() if op["operationId"] not in LEFT_OUT)


@pytest.mark.parametrize("operation_id", fuzzed_operations())
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                         ids=["valid", "invalid"])
def test_the_live_api_answers_without_a_5xx_and_its_errors_are_sentences(
        live_api, fuzzer, operation_id, mode):
    operation = live_api.find_operation_by_id(operation_id)
    headers = {"Authorization": f"Bearer {fuzzer}"}

    @settings(max_examples=EXAMPLES, deadline=DEADLINE, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def requests_to_it(case: schemathesis.Case) -> None:
        prepare(case)
        case.call_and_validate(headers=headers, checks=CHECKS)

    requests_to_it()


def integer_parameters() -> list[tuple[str, str, str]]:
    """(path, where, name) of every integer parameter of the document's GET operations."""
    shared = document()["components"]["parameters"]
    found = []
    for path, item in document()["paths"].items():
        for param in item.get("get", {}).get("parameters", []):
            param = shared[param["$ref"].rsplit("/", 1)[1]] if "$ref" in param else param
            if param["schema"].get("type") == "integer":
                found.append((path, param["in"], param["name"]))
    return found


@pytest.mark.parametrize(("path", "where", "name"), integer_parameters())
def test_a_whole_number_past_64_bits_is_refused_with_a_sentence(platform, fuzzer, path, where,
                                                                 name):
    """What the fuzzer found once (a 500 from the database for 2**63): each integer parameter
    of a read gets it, with the real app and team, every time (the platform admin's reads with
    the admin's token: they change nothing)."""
    admin = document()["paths"][path]["get"]["x-permission"] == "platform.admin"
    big = str(2**63)
    url = path.replace("{name}", TEAM if path.startswith("/v1/teams/") else APP)
    url = url.replace(f"{{{name}}}", big) if where == "path" else url
    r = requests.get(platform.settings.api_url + url, timeout=15,
                     params={name: big} if where == "query" else None,
                     headers={"Authorization": f"Bearer {platform.token if admin else fuzzer}"})
    assert r.status_code < 500, f"curl -H 'Authorization: Bearer T' '{r.url}' -> {r.text}"
    assert r.json()["error"].endswith(SENTENCE_ENDS)


def json_operations() -> list[tuple[str, str]]:
    """(method, path) of every fuzzed operation that takes a JSON body."""
    return [(method.upper(), path) for path, item in document()["paths"].items()
            for method, op in item.items()
            if op["operationId"] not in LEFT_OUT
            and "application/json" in op.get("requestBody", {}).get("content", {})]


def url_for(path: str) -> str:
    """``path`` with the fuzzer's app (or team), the web process and made-up rest."""
    name = TEAM if path.startswith("/v1/teams/") else APP
    return (path.replace("{name}", name).replace("{process_type}", "web")
            .replace("{domain_name}", "fuzz.test").replace("{username}", "nobody"))


@pytest.mark.parametrize(("method", "path"), json_operations())
@pytest.mark.parametrize("body", [[None, None], "text", 7, {"unset": [{}]}],
                         ids=["list", "string", "number", "object-in-a-list"])
def test_a_body_of_the_wrong_shape_is_refused_with_a_sentence(platform, fuzzer, method, path,
                                                              body):
    """What the fuzzer found once (a 500 for a JSON list where an object belongs, and for an
    object among env names to unset), for every operation that takes JSON, every time. The
    real app even for a restage or a task: none of these bodies may start one."""
    url = platform.settings.api_url + url_for(path)
    r = requests.request(method, url, json=body, timeout=15,
                         headers={"Authorization": f"Bearer {fuzzer}"})
    assert r.status_code < 500, (f"curl -X {method} -H 'Authorization: Bearer T' -H "
                                 f"'Content-Type: application/json' -d '{json.dumps(body)}' "
                                 f"'{url}' -> {r.text}")
    if r.status_code >= 400:
        assert r.json()["error"].endswith(SENTENCE_ENDS)


@pytest.mark.parametrize("too_long", ["request line", "header"])
def test_a_request_too_long_for_the_server_is_answered_with_a_json_sentence(
        platform, fuzzer, too_long):
    """What the fuzzer found once: gunicorn refuses a request line over its limit (4,094
    bytes), or a header over its limit (8,190), itself, with an HTML page the API never saw."""
    url = f"{platform.settings.api_url}/v1/apps/{APP}/routes"
    headers = {"Authorization": f"Bearer {fuzzer}"}
    if too_long == "header":
        headers["X-Paas-Team"] = "a" * 9000
    else:
        url += f"?domain={'a' * 5000}"
    r = requests.delete(url, timeout=15, headers=headers)
    assert 400 <= r.status_code < 500
    assert r.headers.get("Content-Type", "").startswith("application/json"), r.text[:300]
    assert r.json()["error"].endswith(SENTENCE_ENDS)


def test_the_fuzzer_sees_the_document_it_is_run_from(platform, fuzzer):
    """The run above means something: the document is served live, and the fuzzer's token
    is a developer's of its own team (so the left-out operations are all that is skipped)."""
    r = requests.get(f"{platform.settings.api_url}/v1/openapi.json", timeout=10)
    assert r.status_code == 200 and r.json()["openapi"].startswith("3.")
    operations = {op["operationId"] for item in r.json()["paths"].values()
                  for op in item.values() if isinstance(op, dict) and "operationId" in op}
    assert set(LEFT_OUT) < operations
    me = requests.get(f"{platform.settings.api_url}/v1/whoami", timeout=10,
                      headers={"Authorization": f"Bearer {fuzzer}"}).json()
    assert me["admin"] is False and me["teams"] == [{"name": TEAM, "role": "developer"}]
    app = requests.get(f"{platform.settings.api_url}/v1/apps/{APP}", timeout=10,
                       headers={"Authorization": f"Bearer {fuzzer}"})
    assert app.status_code == 200 and app.json()["team"] == TEAM
