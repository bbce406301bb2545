"""The manifest parser under arbitrary input: whatever a manifest.yml holds, ``paas push``
either reads valid options from it or stops with one sentence naming the line (the CLI's
ManifestError), never with another exception."""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cli.manifest import FIELDS, PROCESS_FIELDS, AppManifest, ManifestError, load

FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

PIECES = [*"abcdeNn01-9.:_ \n\t[]{},&*!|>'\"#?%@`~/\\\x00\u00e9",
          "applications:\n", "- name: ", "  ", "env:", "!!python/object:os.system",
          "!!binary ", "*a", "&a ", "? ", "<<: ", "---\n", "processes:", "memory: ",
          "instances: ", "routes:"]
YAMLISH = st.lists(st.sampled_from(PIECES), max_size=60).map("".join)
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**12), st.floats(),
                   st.text(max_size=12), st.sampled_from(["256M", "1G", "/health", "port",
                                                          "none", "web", "a.localhost/p"]))
VALUE = st.recursive(SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.one_of(st.sampled_from(sorted(FIELDS | PROCESS_FIELDS | {"route"})),
                              st.text(max_size=6)), inner, max_size=3)), max_leaves=8)
APP = st.dictionaries(st.one_of(st.sampled_from(sorted(FIELDS)), st.text(max_size=8)), VALUE,
                      max_size=6)
DOCUMENT = st.one_of(
    st.fixed_dictionaries({"applications": st.lists(APP, max_size=3)}),
    st.fixed_dictionaries({"applications": VALUE}),
    VALUE,
)


def _judge(tmp_path: Path, text: str, name: str | None) -> None:
    path = tmp_path / "manifest.yml"
    path.write_text(text, errors="surrogateescape")
    try:
        app = load(path, name)
    except ManifestError as e:
        message = e.format_message()
        assert message.startswith("manifest.yml") and message.endswith("(nothing was uploaded)")
        assert len(message.splitlines()) == 1
        return
    if app is None:
        return
    _valid(app)


def _valid(app: AppManifest) -> None:
    """What the push reads from an app entry has the types and ranges it relies on."""
    assert app.name is None or (isinstance(app.name, str) and app.name)
    assert app.path is None or isinstance(app.path, str)
    assert app.instances is None or (type(app.instances) is int and app.instances >= 0)
    for mb in (app.memory_mb, app.disk_mb):
        assert mb is None or (type(mb) is int and mb > 0)
    assert app.command is None or (isinstance(app.command, str) and app.command)
    assert all(isinstance(b, str) and b for b in app.buildpacks)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in app.env.items())
    assert all(isinstance(r, str) for r in app.routes)
    assert isinstance(app.no_route, bool)
    assert app.health_check_type in (None, "port", "http", "process")
    assert app.health_check_http_endpoint is None or app.health_check_http_endpoint[0] == "/"
    assert app.timeout is None or (type(app.timeout) is int and app.timeout > 0)
    for seconds in (app.health_check_interval, app.health_check_invocation_timeout):
        assert seconds is None or (isinstance(seconds, float) and seconds > 0)
    assert all(isinstance(p, dict) and isinstance(p.get("type"), str) for p in app.processes)


@FUZZ
@given(text=YAMLISH, name=st.sampled_from([None, "web", "a"]))
@example(text="applications:\n- ? [a]\n  : 1\n", name=None)
@example(text="applications:\n- name: !!python/name:os.system\n", name=None)
@example(text="applications:\n- name: a\n  env: {? [x]: 1}\n", name=None)
@example(text="applications: [\x00]", name=None)
@example(text="applications:\n- name: a\n  memory: " + "[" * 5000, name=None)
def test_any_text_is_read_or_refused_with_a_sentence(tmp_path: Path, text: str,
                                                      name: str | None) -> None:
    _judge(tmp_path, text, name)


@FUZZ
@given(document=DOCUMENT, name=st.sampled_from([None, "web"]))
def test_any_yaml_document_is_read_or_refused_with_a_sentence(tmp_path: Path, document: object,
                                                              name: str | None) -> None:
    _judge(tmp_path, yaml.safe_dump(document, allow_unicode=True), name)
