"""GET /v1/openapi.json: the API's OpenAPI document (openapi.yaml, written by hand and kept
true by tests/unit/test_openapi.py), read once per process and served as JSON."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml
from flask import Response, jsonify

from controller.api import v1
from controller.auth import Permission, requires

DOCUMENT = Path(__file__).with_name("openapi.yaml")


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI document as a dict (loaded on first use, then kept)."""
    with DOCUMENT.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


@v1.get("/openapi.json")
@requires(Permission.PUBLIC)
def openapi() -> Response:
    return jsonify(document())
