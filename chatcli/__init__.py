"""chatcli: chat with local GGUF models, in-process, from the terminal or from Python."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["chat", "embed", "ChatResponse", "EmbedResponse", "Message", "ChatCliError",
           "__version__"]

if TYPE_CHECKING:
    from chatcli.api import chat, embed
    from chatcli.core.errors import ChatCliError
    from chatcli.responses import ChatResponse, EmbedResponse, Message


def __getattr__(name: str) -> Any:
    # Lazy, so that `import chatcli` (and `chat --help`) stays instant.
    if name in ("chat", "embed"):
        from chatcli import api

        return getattr(api, name)
    if name in ("ChatResponse", "EmbedResponse", "Message"):
        from chatcli import responses

        return getattr(responses, name)
    if name == "ChatCliError":
        from chatcli.core.errors import ChatCliError

        return ChatCliError
    raise AttributeError(name)
