"""The local secret store: source passwords set with ``dataloader secret set SCOPE KEY``.

Locally there is no ``dbutils.secrets``; a load used to find its source password only in the
environment variable ``DATALOADER_SECRET__<SCOPE>__<KEY>``, which must be in the environment of
``dataloader dev`` itself, so setting one meant a restart. The store is a file the load script
reads when the load starts, so a secret set while Dagster runs is used by the next load.

- Where: ``$DATALOADER_HOME/secrets/local.json`` (``.dataloader/secrets/local.json`` by default),
  the directory owner-only (0700), the file owner-only (0600), replaced atomically.
- What: ``{"scope": {"key": "value"}}``. ``names()`` gives scope/key pairs, never values.
- Order: the environment variable wins when both are set (a deployment's or a test's explicit
  setting); the store is the fallback. On Databricks ``dbutils.secrets`` is used and neither is read.

Standard library only: the Pipes scripts import it (they run where only ``databricks_scripts/`` is).
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

from databricks_scripts.failures import BadConfig

STORE_DIR = "secrets"
STORE_FILE = "local.json"


def default_home(env: Mapping[str, str]) -> Path:
    """``DATALOADER_HOME`` of ``env`` (``ScriptEnv`` reads the environment), else ``.dataloader``
    next to ``databricks_scripts/`` (the repo's, as the code location's default)."""
    home = env.get("DATALOADER_HOME")
    return Path(home).expanduser() if home else Path(__file__).resolve().parents[1] / ".dataloader"


def store_path(home: Path) -> Path:
    return Path(home) / STORE_DIR / STORE_FILE


class SecretStoreError(BadConfig):
    """The store exists but cannot be used (wrong permissions, not JSON)."""


def _read(path: Path) -> dict[str, dict[str, str]]:
    try:
        info = path.stat()
    except FileNotFoundError:
        return {}
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretStoreError(
            f"{path} is readable by others (mode {stat.S_IMODE(info.st_mode):o}); "
            f"run: chmod 600 {path}"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except ValueError:
        # Never quote the content: it holds secrets.
        raise SecretStoreError(f"{path} is not valid JSON; remove it and set the secrets again")
    if not isinstance(data, dict):
        raise SecretStoreError(f"{path} is not a JSON object; remove it and set the secrets again")
    return {
        str(scope): {str(k): str(v) for k, v in keys.items()}
        for scope, keys in data.items()
        if isinstance(keys, dict)
    }


def get(home: Path, scope: str, key: str) -> str | None:
    """The value of ``scope``/``key``, or None when the store or the entry is missing."""
    return _read(store_path(home)).get(scope, {}).get(key)


def values(home: Path) -> list[str]:
    """Every value in the store (for masking), [] when there is none or it cannot be read."""
    try:
        data = _read(store_path(home))
    except SecretStoreError:
        return []
    return [v for keys in data.values() for v in keys.values() if v]


def names(home: Path) -> list[tuple[str, str]]:
    """The (scope, key) pairs set, sorted; never the values."""
    data = _read(store_path(home))
    return sorted((scope, key) for scope, keys in data.items() for key in keys)


def put(home: Path, scope: str, key: str, value: str) -> Path:
    """Set ``scope``/``key`` to ``value`` (owner-only directory and file, atomic replace)."""
    if not scope or not key:
        raise SecretStoreError("scope and key must not be empty")
    if not value:
        raise SecretStoreError("the value is empty: nothing stored")
    path = store_path(home)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    data = _read(path)
    data.setdefault(scope, {})[key] = value
    fd, tmp = tempfile.mkstemp(prefix=".local.", dir=path.parent)  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove(home: Path, scope: str, key: str) -> bool:
    """Delete ``scope``/``key``; False when it was not set."""
    path = store_path(home)
    data = _read(path)
    if key not in data.get(scope, {}):
        return False
    del data[scope][key]
    if not data[scope]:
        del data[scope]
    fd, tmp = tempfile.mkstemp(prefix=".local.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
    os.replace(tmp, path)
    return True
