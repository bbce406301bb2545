"""The rules an upload's entries follow, as a pure checker: tar headers in, entries or a
refusal out (no I/O, so the controller's check and the stager's unpack judge alike).

- names: relative, valid UTF-8, no ``..``, at most ``max_name_bytes`` long (each part at most
  ``max_component_bytes``) and ``max_depth`` deep; ``./`` prefixes are dropped;
- kinds: regular files, folders, symlinks, and hard links to an earlier regular file of the
  same upload (made as hard links inside the tree); no devices, FIFOs, sparse files or
  unknown kinds; no setuid, setgid or sticky bits;
- every parent of an entry is a folder (given or implied), never a symlink or a file, and a
  name appears once (a folder may be given again);
- a symlink's target, followed through the upload's other symlinks as the kernel would once
  all of them exist, stays inside the tree, on paths of at most ``max_name_bytes``, within
  ``max_link_hops`` links. Links are judged at the end, against every link of the upload,
  because the extractor creates them last.
"""

from __future__ import annotations

import tarfile
from collections import deque
from dataclasses import dataclass
from enum import StrEnum

from uploads.errors import UploadRefused
from uploads.limits import Limits


class Kind(StrEnum):
    FILE = "file"
    DIR = "folder"
    SYMLINK = "symlink"
    HARDLINK = "hard link"


@dataclass(frozen=True)
class Entry:
    name: str  # normalised: relative, no "./", no trailing "/"
    kind: Kind
    mode: int  # 0o755 or 0o644 (folders always 0o755)
    size: int = 0
    mtime: float = 0.0
    link: str = ""  # a symlink's target as given; a hard link's target, normalised


SPECIAL = {tarfile.CHRTYPE: "a character device", tarfile.BLKTYPE: "a block device",
           tarfile.FIFOTYPE: "a FIFO", tarfile.GNUTYPE_SPARSE: "a sparse file"}


class Checker:
    """Judges entries one at a time as they stream by; :meth:`finish` judges the links."""

    def __init__(self, limits: Limits | None = None, what: str = "package") -> None:
        self.limits = limits or Limits()
        self.what = what
        self.kinds: dict[str, Kind] = {}
        self.links: dict[str, str] = {}  # symlink name -> target, in upload order
        self.entries = 0
        self.bytes = 0
        self.names_bytes = 0

    # -- sentences ----------------------------------------------------------------------
    @property
    def hint(self) -> str:
        if self.what == "package":
            return "remove it from the app folder (or add it to .paasignore) and push again"
        return f"rebuild the {self.what} tarball without it"

    @property
    def top(self) -> str:
        return "the app folder" if self.what == "package" else f"the {self.what}"

    def refuse(self, name: str, problem: str, hint: str | None = None) -> UploadRefused:
        return UploadRefused(f"the {self.what} entry {name!r} {problem}: {hint or self.hint}.")

    def link_outside(self, name: str, target: str, how: str = "") -> UploadRefused:
        return UploadRefused(
            f"the {self.what} symlink {name!r} points outside {self.top} (to {target!r}"
            f"{how}): replace it with the file itself or a relative link inside it.")

    # -- one entry -----------------------------------------------------------------------
    def admit(self, member: tarfile.TarInfo) -> Entry | None:
        """The entry ``member`` makes (None for the tree's own folder), or UploadRefused."""
        self.count(member.name)
        parts = self.parts(member.name)
        if not parts:
            if member.isdir():
                return None
            raise self.refuse(member.name, "names the top folder itself but is not a folder")
        if member.mode & 0o7000:
            raise self.refuse(member.name, "has the setuid, setgid or sticky bit",
                              "clear it (chmod ug-s,-t) and upload again")
        kind = self.kind_of(member)
        name = "/".join(parts)
        self.parents(member.name, parts)
        link = ""
        if kind is Kind.SYMLINK:
            link = self.symlink_target(member.name, member.linkname)
        elif kind is Kind.HARDLINK:
            link = self.hardlink_target(member.name, member.linkname)
        size = member.size if kind is Kind.FILE else 0
        self.place(member.name, name, kind)
        if kind is Kind.SYMLINK:
            self.links[name] = link
        self.add_bytes(member.name, size)
        mode = 0o755 if kind is Kind.DIR or member.mode & 0o111 else 0o644
        return Entry(name, kind, mode, size, float(member.mtime or 0), link)

    def admit_file(self, given: str, mode: int, size: int) -> Entry:
        """A regular file that joins the upload from elsewhere (the resource cache)."""
        self.count(given)
        parts = self.parts(given)
        if not parts:
            raise self.refuse(given, "names the top folder itself but is not a folder")
        if mode & 0o7000:
            raise self.refuse(given, "has the setuid, setgid or sticky bit",
                              "clear it (chmod ug-s,-t) and upload again")
        name = "/".join(parts)
        self.parents(given, parts)
        self.place(given, name, Kind.FILE)
        self.add_bytes(given, size)
        return Entry(name, Kind.FILE, 0o755 if mode & 0o111 else 0o644, size)

    def count(self, given: str) -> str:
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise UploadRefused(
                f"the {self.what} has more than {self.limits.max_entries} files (at {given!r}): "
                + ("add what need not be deployed to .paasignore." if self.what == "package"
                   else f"make the {self.what} smaller."))
        return given

    def add_bytes(self, given: str, size: int) -> None:
        self.bytes += size
        if self.bytes > self.limits.max_bytes:
            raise self.too_big(given)

    def too_big(self, given: str) -> UploadRefused:
        fix = ("add what need not be deployed to .paasignore." if self.what == "package"
               else f"make the {self.what} smaller.")
        return UploadRefused(f"the {self.what} unpacks to more than "
                             f"{self.limits.describe_bytes()} (at {given!r}): {fix}")

    def text(self, given: str, value: str, what: str) -> int:
        """The UTF-8 length of a name or target; refuses what is not UTF-8 or too long."""
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise self.refuse(given, f"has a {what} that is not valid UTF-8",
                              "rename it with UTF-8 characters only") from None
        if size > self.limits.max_name_bytes:
            raise self.refuse(given, f"has a {what} longer than "
                                     f"{self.limits.max_name_bytes} bytes",
                              "shorten it")
        self.names_bytes += size
        if self.names_bytes > self.limits.max_names_bytes:
            raise UploadRefused(f"the {self.what}'s names add up to more than "
                                f"{self.limits.max_names_bytes // 1024**2} MiB (at {given!r}):"
                                " upload fewer or shorter names.")
        return size

    def parts(self, given: str) -> list[str]:
        """The parts of a relative name without "." and empty parts; refuses the rest."""
        self.text(given, given, "name")
        if given.startswith("/"):
            raise self.refuse(given, f"points outside {self.top} (an absolute path)",
                              "make it relative to the top folder")
        if "\x00" in given:
            raise self.refuse(given, "has a NUL character in its name", "rename it")
        parts = [p for p in given.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise self.refuse(given, f"points outside {self.top} ('..' in its name)",
                              "name it without '..'")
        if len(parts) > self.limits.max_depth:
            raise self.refuse(given, f"is more than {self.limits.max_depth} folders deep",
                              "flatten the folders")
        for part in parts:
            if len(part.encode("utf-8")) > self.limits.max_component_bytes:
                raise self.refuse(given, f"has a part longer than "
                                         f"{self.limits.max_component_bytes} bytes",
                                  "shorten it")
        return parts

    def kind_of(self, member: tarfile.TarInfo) -> Kind:
        if member.type in SPECIAL or member.sparse is not None:
            special = SPECIAL.get(member.type, "a sparse file")
            raise self.refuse(member.name, f"is {special}, not a regular file, folder or link")
        if member.isdir():
            return Kind.DIR
        if member.issym():
            return Kind.SYMLINK
        if member.islnk():
            return Kind.HARDLINK
        if member.isreg():
            return Kind.FILE
        raise self.refuse(member.name, f"is of an unknown kind ({member.type!r}), not a "
                                       "regular file, folder or link")

    def parents(self, given: str, parts: list[str]) -> None:
        """Every parent is a folder: given as one, or implied (and made) here."""
        prefix = ""
        for part in parts[:-1]:
            prefix = f"{prefix}/{part}" if prefix else part
            kind = self.kinds.get(prefix)
            if kind is None:
                self.text(given, prefix, "folder name")
                self.kinds[prefix] = Kind.DIR
            elif kind is Kind.SYMLINK:
                raise self.refuse(given, f"lies under {prefix!r}, which is a symlink",
                                  "upload the folder itself instead of a link to it")
            elif kind is not Kind.DIR:
                raise self.refuse(given, f"lies under {prefix!r}, which is a {kind}, not a "
                                         "folder")

    def place(self, given: str, name: str, kind: Kind) -> None:
        before = self.kinds.get(name)
        if before is not None and not (before is Kind.DIR and kind is Kind.DIR):
            same = "twice" if before is kind else f"twice (as a {before} and as a {kind})"
            raise self.refuse(given, f"appears {same}", "keep one of them")
        self.kinds[name] = kind

    def symlink_target(self, given: str, target: str) -> str:
        self.text(given, target, "link target")
        if not target:
            raise self.refuse(given, "is a symlink to nothing (an empty target)")
        if target.startswith("/"):
            raise self.link_outside(given, target)
        if "\x00" in target:
            raise self.refuse(given, "has a NUL character in its link target")
        return target

    def hardlink_target(self, given: str, target: str) -> str:
        self.text(given, target, "link target")
        parts = [p for p in target.split("/") if p not in ("", ".")]
        name = "/".join(parts)
        if target.startswith("/") or ".." in parts or self.kinds.get(name) is not Kind.FILE:
            raise self.refuse(given, f"is a hard link to {target!r}, which is not a regular "
                                     "file given earlier in the upload",
                              "replace it with a copy of the file")
        return name

    # -- the links, once every entry is known ---------------------------------------------
    def finish(self) -> list[Entry]:
        """Judge every symlink against all of them; return them in upload order."""
        budget = [self.limits.max_link_steps]
        for name, target in self.links.items():
            self.resolve(name, target, budget)
        return [Entry(name, Kind.SYMLINK, 0o777, link=target)
                for name, target in self.links.items()]

    def resolve(self, name: str, target: str, budget: list[int]) -> list[str]:
        """Where ``name`` leads, following the upload's links: a path inside the tree."""
        limits = self.limits
        stack = name.split("/")[:-1]  # the link's folder; a physical path from the top
        length = sum(len(p.encode("utf-8")) + 1 for p in stack)
        pending = deque(target.split("/"))
        hops = 0
        while pending:
            budget[0] -= 1
            if budget[0] < 0:
                raise UploadRefused(f"the {self.what}'s symlinks take too long to resolve "
                                    f"(at {name!r}): upload fewer or simpler links.")
            part = pending.popleft()
            if part in ("", "."):
                continue
            if part == "..":
                if not stack:
                    raise self.link_outside(name, target)
                length -= len(stack.pop().encode("utf-8")) + 1
                continue
            stack.append(part)
            length += len(part.encode("utf-8")) + 1
            if length > limits.max_name_bytes:
                raise self.link_outside(name, target, ", through a path longer than "
                                                      f"{limits.max_name_bytes} bytes")
            inner = self.links.get("/".join(stack))
            if inner is not None:
                hops += 1
                if hops > limits.max_link_hops:
                    raise self.link_outside(name, target, f", through more than "
                                                          f"{limits.max_link_hops} links")
                length -= len(stack.pop().encode("utf-8")) + 1
                pending.extendleft(reversed(inner.split("/")))
        return stack


def buildpack_root(kinds: dict[str, Kind]) -> str | None:
    """Where a buildpack's ``bin/compile`` is: "" at the top, or the one top folder that
    holds everything; None if it has none."""
    runnable = (Kind.FILE, Kind.HARDLINK, Kind.SYMLINK)
    if kinds.get("bin/compile") in runnable:
        return ""
    tops = [name for name in kinds if "/" not in name]
    if len(tops) == 1 and kinds[tops[0]] is Kind.DIR \
            and kinds.get(f"{tops[0]}/bin/compile") in runnable:
        return tops[0]
    return None
