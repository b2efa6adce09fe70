"""Errors a user can cause, each with a message written for that user.

The CLI prints ``str(error)`` on one line and exits 1; the Python API raises them as they are.
"""

from __future__ import annotations


class ChatCliError(Exception):
    """Base class of every error chatcli reports to its user."""


class ModelNotFoundError(ChatCliError):
    """No usable model file for the requested name."""


class ModelLoadError(ChatCliError):
    """The model file exists but llama.cpp cannot load it (truncated, not GGUF, ...)."""


class InvalidOptionError(ChatCliError):
    """An unknown option name or a value of the wrong type or range."""


class TemplateError(ChatCliError):
    """The model's chat template failed to render or tried something unsafe."""


class RequestError(ChatCliError):
    """A malformed request: bad message role, wrong types, ..."""


class ContextOverflowError(ChatCliError):
    """Even the system prompt and the latest message do not fit in num_ctx."""


class NotSupportedError(ChatCliError):
    """A parameter chatcli does not implement (yet) for this request or model."""
