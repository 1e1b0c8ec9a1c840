"""The one error type users see: a message naming the input and what to do."""

from __future__ import annotations


class XichError(Exception):
    """Bad input or an unusable configuration; the CLI prints the message and exits non-zero."""


class Unavailable(XichError):
    """A server (object store, database) that did not answer: the same call may succeed later, so the
    flows retry it."""
