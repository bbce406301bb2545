"""Container labels are defined once, in contracts.labels: no other module names one."""

from __future__ import annotations

import ast
from pathlib import Path

from contracts import labels

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("bench", "buildpacks", "cli", "confinement", "contracts", "controller", "dea_agent",
            "launcher", "logpipe", "router", "uploads")


KINDS = {v for k, v in vars(labels).items() if k.startswith("KIND_")}


def _label_constants(path: Path) -> list[str]:
    """Module-level constants of ``path`` that define a label (``LABEL_... = "paas...."``)
    or a value of ``paas.kind`` (``KIND... = "task"``)."""
    found = []
    for node in ast.parse(path.read_text(), str(path)).body:
        if not isinstance(node, ast.Assign) or not isinstance(node.value, ast.Constant):
            continue
        value = node.value.value
        for target in node.targets:
            if not isinstance(target, ast.Name) or not isinstance(value, str):
                continue
            if (target.id.startswith("LABEL_") and value.startswith("paas.")
                    or target.id.startswith("KIND") and value in KINDS):
                found.append(f"{path.relative_to(ROOT)}: {target.id}")
    return found


def test_no_module_but_contracts_labels_defines_a_label():
    elsewhere = [found for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
                 if path != ROOT / "contracts" / "labels.py"
                 for found in _label_constants(path)]
    assert elsewhere == []


def test_labels_are_distinct_names_under_paas():
    names = {k: v for k, v in vars(labels).items() if k.startswith("LABEL_")}
    assert len(set(names.values())) == len(names)
    assert all(v.startswith("paas.") for v in names.values())
    kinds = [v for k, v in vars(labels).items() if k.startswith("KIND_")]
    assert len(set(kinds)) == len(kinds)
