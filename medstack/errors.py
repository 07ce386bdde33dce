"""The one family of errors a person can act on: :class:`MedstackError` and what its type says.

Each subclass states, as class attributes, its exit code (2: bad input or config, 1: a run that failed), its kind
(the words after ``medstack:``) and its hint (the one line of what to do, or ``None``). The terminal
(:mod:`medstack.console.errors`) reads them by ``isinstance``, never by a class name or a message's wording, so
rewording a message cannot change an exit code. This module is the bottom of the import graph: it imports nothing
from medstack, so every layer (the config included) may raise its errors.
"""

from __future__ import annotations

BAD_INPUT = 2
RUN_FAILED = 1


class MedstackError(Exception):
    """An error of medstack's own, with its exit code, kind and hint. Subclasses keep their older bases too
    (``ValueError``, ``OSError``), so code that catches those still does."""

    exit_code: int = RUN_FAILED
    kind: str | None = "error"  # None: the message is the whole report, one line ``medstack: <message>``
    hint: str | None = None


class UsageError(MedstackError):
    """Bad input given to a command (``predict``/``serve-model``: a model, image, registry, API key, flag) whose
    message names the culprit and what to do: exit 2, reported as the one line ``medstack: <message>``."""

    exit_code, kind = BAD_INPUT, None
