"""What an uploaded .tar.gz (an app package or a buildpack) may contain, and how it is unpacked.

One set of rules, used twice: the controller checks an upload before it stores anything
(:func:`check`), and the stager unpacks it (:func:`extract`), each in one streaming pass
over the gzip. Neither relies on :mod:`tarfile`'s extraction filters: entries are read with
:mod:`tarfile` in stream mode, judged by :class:`~uploads.rules.Checker` (a pure function of
the entries), and written by code that never follows a link.

    UploadRefused        a sentence naming the entry and what to do
"""

from __future__ import annotations

from uploads.errors import UploadRefused
from uploads.extract import extract
from uploads.limits import MAX_FILES, MAX_UNPACKED_BYTES, Limits
from uploads.reader import Summary, check
from uploads.rules import Entry, Kind, buildpack_root

__all__ = ["MAX_FILES", "MAX_UNPACKED_BYTES", "Entry", "Kind", "Limits", "Summary",
           "UploadRefused", "buildpack_root", "check", "extract"]
