"""How big an upload may be once unpacked. The compressed size is capped where it is received
(``settings.max_upload_bytes`` for packages)."""

from __future__ import annotations

from dataclasses import dataclass

MAX_FILES = 100_000
MAX_UNPACKED_BYTES = 4 * 1024**3


@dataclass(frozen=True)
class Limits:
    max_entries: int = MAX_FILES
    # Decompressed bytes actually read from the gzip (tar headers included), counted while
    # streaming: a header cannot claim less than what follows it.
    max_bytes: int = MAX_UNPACKED_BYTES
    max_name_bytes: int = 1024  # an entry's whole path; also a link's target and resolution
    max_component_bytes: int = 255  # one folder or file name (the kernel's NAME_MAX)
    max_depth: int = 64
    max_link_hops: int = 40  # links followed while resolving one link (the kernel's 40)
    # Work spent resolving all the links of one upload, in path components.
    max_link_steps: int = 1_000_000
    max_header_bytes: int = 64 * 1024  # one pax or GNU long-name header
    # Names and link targets kept in memory while checking (duplicates, parents, links).
    max_names_bytes: int = 64 * 1024**2

    def describe_bytes(self) -> str:
        return _size(self.max_bytes)


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} bytes"
