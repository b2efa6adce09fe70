"""Where chatcli keeps its files.

Everything the user owns (config, input history, models) lives under platformdirs'
per-user directories, or under one directory when ``CHATCLI_HOME`` is set (tests always
set it, so they never touch the real home directory).
"""

from __future__ import annotations

import os
from pathlib import Path

APP_NAME = "chatcli"
HOME_ENV = "CHATCLI_HOME"


def _home_override() -> Path | None:
    value = os.environ.get(HOME_ENV)
    return Path(value).expanduser() if value else None


def config_dir() -> Path:
    """Directory for config.toml and other settings."""
    home = _home_override()
    if home is not None:
        return home / "config"
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME))


def data_dir() -> Path:
    """Directory for user data: input history, saved state."""
    home = _home_override()
    if home is not None:
        return home / "data"
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME))


def cache_dir() -> Path:
    """Directory for things chatcli can recompute (the safe-mode verdict)."""
    home = _home_override()
    if home is not None:
        return home / "cache"
    import platformdirs

    return Path(platformdirs.user_cache_dir(APP_NAME))


def models_dir() -> Path:
    """Root of the model store (blobs/ and manifests/)."""
    home = _home_override()
    if home is not None:
        return home / "models"
    return data_dir() / "models"


def history_file() -> Path:
    """The REPL's persistent input history."""
    return data_dir() / "history"
