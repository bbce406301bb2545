"""npm-style semver ranges, small and pure: enough to pick a Node.js release for ``engines.node``.

Supported forms (as npm reads them): exact versions (``20.11.1``, ``=20.11.1``, ``v20.11.1``),
comparators (``>=18``, ``<21``, ``>18.2``, ``<=20.1``), caret (``^20.1.0``, ``^0.2``), tilde
(``~20.11``), x-ranges (``20``, ``20.x``, ``20.11.*``, ``*``, empty), hyphen ranges
(``18 - 20``), space-separated intersections and ``||`` unions. Pre-releases only match a
range that names the same ``major.minor.patch`` with a pre-release, as in npm.

This file has no imports outside the standard library: it runs in the staging container too.
"""

from __future__ import annotations

import re

__all__ = ["InvalidRange", "Version", "max_satisfying", "parse_range", "satisfies"]


class InvalidRange(ValueError):
    """The text is not a semver range this matcher understands."""


_VERSION = re.compile(
    r"^v?(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")
_PARTIAL = re.compile(
    r"^v?(\d+|[xX*])(?:\.(\d+|[xX*])(?:\.(\d+|[xX*])(?:-([0-9A-Za-z.-]+))?)?)?"
    r"(?:\+[0-9A-Za-z.-]+)?$")
_COMPARATOR = re.compile(r"^(<=|>=|<|>|=|~>|~|\^)?(.*)$")
_OPERATOR_SPACE = re.compile(r"(<=|>=|<|>|=|~>|~|\^)\s+")
_HYPHEN = re.compile(r"^\s*(\S+)\s+-\s+(\S+)\s*$")


class Version:
    """A full ``MAJOR.MINOR.PATCH[-PRERELEASE]`` version, ordered as semver orders them."""

    __slots__ = ("major", "minor", "patch", "prerelease", "text")

    def __init__(self, major: int, minor: int, patch: int, prerelease: str = "") -> None:
        self.major, self.minor, self.patch = major, minor, patch
        self.prerelease = prerelease
        self.text = f"{major}.{minor}.{patch}" + (f"-{prerelease}" if prerelease else "")

    @classmethod
    def parse(cls, text: str) -> Version:
        match = _VERSION.match(text.strip())
        if not match:
            raise ValueError(f"not a semver version: {text!r}")
        major, minor, patch, pre = match.groups()
        return cls(int(major), int(minor), int(patch), pre or "")

    @property
    def release(self) -> tuple[int, int, int]:
        return self.major, self.minor, self.patch

    def _key(self) -> tuple:
        if not self.prerelease:
            return (*self.release, 1, ())
        parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p)
                      for p in self.prerelease.split("."))
        return (*self.release, 0, parts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and self._key() == other._key()

    def __lt__(self, other: Version) -> bool:
        return self._key() < other._key()

    def __le__(self, other: Version) -> bool:
        return self._key() <= other._key()

    def __gt__(self, other: Version) -> bool:
        return self._key() > other._key()

    def __ge__(self, other: Version) -> bool:
        return self._key() >= other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Version({self.text!r})"

    def __str__(self) -> str:
        return self.text


# A comparator set is a list of (operator, version) that must all hold; a range is a list of
# comparator sets, any one of which may hold.
Comparator = tuple[str, Version]
Range = list[list[Comparator]]


def parse_range(text: str) -> Range:
    """Parse an npm range into comparator sets. Raises InvalidRange on anything else."""
    if not isinstance(text, str):
        raise InvalidRange(f"not a version range: {text!r}")
    sets: Range = []
    for alternative in text.split("||"):
        hyphen = _HYPHEN.match(alternative)
        if hyphen:
            sets.append(_hyphen(hyphen.group(1), hyphen.group(2), text))
            continue
        comparators: list[Comparator] = []
        for token in _OPERATOR_SPACE.sub(r"\1", alternative.strip()).split():
            comparators.extend(_desugar(token, text))
        sets.append(comparators)
    return sets


def satisfies(version: Version | str, range_text: str | Range) -> bool:
    v = Version.parse(version) if isinstance(version, str) else version
    sets = parse_range(range_text) if isinstance(range_text, str) else range_text
    return any(_set_allows(comparators, v) for comparators in sets)


def max_satisfying(versions: list[str], range_text: str) -> str | None:
    """The highest of ``versions`` (strings; unparsable ones are skipped) inside the range."""
    sets = parse_range(range_text)
    best: Version | None = None
    for text in versions:
        try:
            v = Version.parse(text)
        except ValueError:
            continue
        if (best is None or v > best) and satisfies(v, sets):
            best = v
    return best.text if best else None


# -- internals ---------------------------------------------------------------------------------
def _set_allows(comparators: list[Comparator], v: Version) -> bool:
    for op, bound in comparators:
        if not _compare(op, v, bound):
            return False
    if v.prerelease:  # npm: a pre-release only matches a comparator on its own release
        return any(bound.prerelease and bound.release == v.release for _op, bound in comparators)
    return True


def _compare(op: str, v: Version, bound: Version) -> bool:
    if op == ">=":
        return v >= bound
    if op == ">":
        return v > bound
    if op == "<":
        return v < bound
    if op == "<=":
        return v <= bound
    return v == bound


def _partial(text: str, whole: str) -> tuple[int | None, int | None, int | None, str]:
    """``1``, ``1.2``, ``1.x``, ``1.2.3-rc.1``: the numbers given (None when wild)."""
    match = _PARTIAL.match(text)
    if not match:
        raise InvalidRange(f"{whole!r} is not a version range (could not read {text!r})")
    numbers: list[int | None] = []
    wild = False
    for part in match.groups()[:3]:
        if part is None or part in ("x", "X", "*") or wild:
            wild = True
            numbers.append(None)
        else:
            numbers.append(int(part))
    pre = match.group(4) or ""
    return numbers[0], numbers[1], numbers[2], pre if numbers[2] is not None else ""


def _floor(major: int | None, minor: int | None, patch: int | None, pre: str = "") -> Version:
    return Version(major or 0, minor or 0, patch or 0, pre)


def _next(major: int | None, minor: int | None) -> Version:
    """The first version above an x-range: ``1`` -> 2.0.0, ``1.2`` -> 1.3.0."""
    if minor is None:
        return Version((major or 0) + 1, 0, 0)
    return Version(major or 0, minor + 1, 0)


_ANY: list[Comparator] = [(">=", Version(0, 0, 0))]


def _desugar(token: str, whole: str) -> list[Comparator]:
    match = _COMPARATOR.match(token)
    op, rest = match.group(1) or "", match.group(2)
    if rest in ("", "*", "x", "X") and op in ("", "=", ">=", "~", "^"):
        return list(_ANY)
    major, minor, patch, pre = _partial(rest, whole)
    if major is None:  # "*", or "<*" and friends: npm treats "<*" as nothing
        if op in ("<", ">"):
            return [("<", Version(0, 0, 0))]
        return list(_ANY)
    full = patch is not None
    if op in ("", "="):
        if full:
            return [("=", Version(major, minor, patch, pre))]
        return [(">=", _floor(major, minor, None)), ("<", _next(major, minor))]
    if op in ("~", "~>"):
        low = _floor(major, minor, patch, pre)
        high = _next(major, minor)  # ~1.2.3 -> <1.3.0; ~1.2 -> <1.3.0; ~1 -> <2.0.0
        return [(">=", low), ("<", high)]
    if op == "^":
        low = _floor(major, minor, patch, pre)
        if major > 0 or minor is None:
            high = Version(major + 1, 0, 0)
        elif minor > 0 or patch is None:
            high = Version(0, minor + 1, 0)
        else:
            high = Version(0, 0, patch + 1)
        return [(">=", low), ("<", high)]
    if op == ">=":
        return [(">=", _floor(major, minor, patch, pre))]
    if op == "<":
        return [("<", _floor(major, minor, patch, pre))]
    if op == ">":
        return [(">", Version(major, minor, patch, pre))] if full else \
            [(">=", _next(major, minor))]
    if op == "<=":
        return [("<=", Version(major, minor, patch, pre))] if full else \
            [("<", _next(major, minor))]
    raise InvalidRange(f"{whole!r} is not a version range")  # pragma: no cover


def _hyphen(low_text: str, high_text: str, whole: str) -> list[Comparator]:
    major, minor, patch, pre = _partial(low_text, whole)
    low = _floor(major, minor, patch, pre) if major is not None else Version(0, 0, 0)
    h_major, h_minor, h_patch, h_pre = _partial(high_text, whole)
    if h_major is None:
        return [(">=", low)]
    if h_patch is None:
        return [(">=", low), ("<", _next(h_major, h_minor))]
    return [(">=", low), ("<=", Version(h_major, h_minor, h_patch, h_pre))]
