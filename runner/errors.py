"""The one family of errors the runner raises. Only the CLI turns them into a message and exit code."""

from __future__ import annotations


class CellzooError(Exception):
    """A failed run (exit 1). The message says what went wrong, with the value seen, and what to do."""

    exit_code = 1


class UsageError(CellzooError):
    """Bad usage (exit 2): an argument that cannot work, caught before anything runs."""

    exit_code = 2


class InputError(CellzooError):
    """The query data cannot be annotated as given."""


class ModelError(CellzooError):
    """A model that cannot be resolved, fetched, verified or loaded."""


class RegistryError(CellzooError):
    """A malformed registry file."""


class OutputError(CellzooError):
    """Results that cannot be written without losing something."""
