"""Pipfile.lock to requirements.txt, as ``pipenv requirements --hash`` prints it, so pip
installs exactly what the lock pins without pipenv itself. Pure; standard library only.
"""

from __future__ import annotations

import json


class LockError(Exception):
    """A sentence for the pusher about their Pipfile.lock."""


def pipfile_lock_requirements(text: str) -> str:
    """requirements.txt lines for the ``default`` packages of a Pipfile.lock (what
    ``pipenv requirements --hash`` prints): pinned versions with their hashes and markers,
    VCS and path entries as pip spells them."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise LockError(f"Pipfile.lock is not valid JSON (line {e.lineno}: {e.msg}): run "
                        "'pipenv lock' and push again.") from e
    packages = data.get("default") if isinstance(data, dict) else None
    if not isinstance(packages, dict):
        raise LockError("Pipfile.lock has no 'default' section: run 'pipenv lock' and push "
                        "again.")
    lines = []
    for name, spec in sorted(packages.items()):
        if not isinstance(spec, dict):
            continue
        extras = spec.get("extras") or []
        full = name + (f"[{','.join(extras)}]" if extras else "")
        markers = spec.get("markers")
        suffix = f" ; {markers}" if markers else ""
        if "version" in spec:
            hashes = "".join(f" --hash={h}" for h in spec.get("hashes", []))
            lines.append(f"{full}{spec['version']}{suffix}{hashes}")
        elif any(vcs in spec for vcs in ("git", "hg", "svn", "bzr")):
            vcs = next(v for v in ("git", "hg", "svn", "bzr") if v in spec)
            url = spec[vcs] if spec[vcs].startswith(f"{vcs}+") else f"{vcs}+{spec[vcs]}"
            ref = f"@{spec['ref']}" if spec.get("ref") else ""
            editable = "-e " if spec.get("editable") else ""
            lines.append(f"{editable}{url}{ref}#egg={name}{suffix}")
        elif "path" in spec or "file" in spec:
            where = spec.get("path") or spec.get("file")
            editable = "-e " if spec.get("editable") else ""
            lines.append(f"{editable}{where}{suffix}")
        else:
            lines.append(f"{full}{suffix}")
    return "".join(f"{line}\n" for line in lines)
