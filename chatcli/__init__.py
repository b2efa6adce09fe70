"""chatcli: chat with local GGUF models, in-process, from the terminal or from Python."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["chat", "embed", "ChatResponse", "EmbedResponse", "Message", "ChatCliError",
           "__version__"]

if TYPE_CHECKING:
    from .api import chat
    from .embedding import EmbedResponse, embed
    from .errors import ChatCliError
    from .responses import ChatResponse, Message


def __getattr__(name: str) -> Any:
    # Lazy, so that `import chatcli` (and `chat --help`) stays instant.
    if name == "chat":
        from .api import chat

        return chat
    if name in ("embed", "EmbedResponse"):
        from . import embedding

        return getattr(embedding, name)
    if name in ("ChatResponse", "Message"):
        from . import responses

        return getattr(responses, name)
    if name == "ChatCliError":
        from .errors import ChatCliError

        return ChatCliError
    raise AttributeError(name)
