"""User configuration: ``config.json`` in the config directory.

    {"default_model": "llama3.2"}

``CHATCLI_MODEL`` in the environment overrides ``default_model``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from chatcli.core.names import DEFAULT_MODEL
from chatcli.core.paths import config_dir


def load_config() -> dict[str, Any]:
    path = config_dir() / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as e:
        from chatcli.core.errors import ChatCliError

        raise ChatCliError(f"cannot read {path}: {e}") from None
    return data if isinstance(data, dict) else {}


def default_model() -> str:
    """The model `chat run` uses when none is named."""
    return os.environ.get("CHATCLI_MODEL") or load_config().get("default_model") or DEFAULT_MODEL
