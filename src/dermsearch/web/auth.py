"""API tokens for ``dermsearch serve``: named users with a role, hashed at rest.

A token is 32 random bytes (URL-safe base64, shown once when created). The store keeps only its
SHA-256 (the tokens are high-entropy, so a fast hash suffices; no salt is needed to stop a lookup
table), with the user's name, role (``rater`` or ``admin``), creation and revocation times, in
``web-tokens.json`` beside the index (written atomically, mode 0600). A request authenticates with
``Authorization: Bearer TOKEN`` or, for the browser pages, the HttpOnly cookie ``/api/login`` sets.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..io import write_json

__all__ = ["TokenStore", "User", "ROLES", "TOKEN_FILE", "COOKIE"]

ROLES = ("rater", "admin")
TOKEN_FILE = "web-tokens.json"
COOKIE = "dermsearch_token"


@dataclass(frozen=True)
class User:
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._cache: tuple[float, list[dict]] | None = None

    @classmethod
    def for_index(cls, index_dir: str | os.PathLike) -> TokenStore:
        return cls(Path(index_dir) / TOKEN_FILE)

    def _read(self) -> list[dict]:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return []
        if self._cache is None or self._cache[0] != mtime:      # revocations take effect at once
            self._cache = (mtime, json.loads(self.path.read_text()).get("tokens", []))
        return self._cache[1]

    def _write(self, tokens: list[dict]) -> None:
        write_json(self.path, {"tokens": tokens}, indent=1, mode=0o600)
        self._cache = None

    def all(self) -> list[dict]:
        """Every token record (hashes, never tokens), revoked ones included."""
        return list(self._read())

    def active(self) -> list[dict]:
        return [t for t in self._read() if not t.get("revoked")]

    def create(self, name: str, role: str) -> str:
        """A new token for ``name``; returns it (the store keeps only its hash)."""
        if role not in ROLES:
            raise ConfigError(f"unknown role {role!r}; valid: {', '.join(ROLES)}")
        name = name.strip()
        if not name or len(name) > 64 or not all(c.isalnum() or c in "._-@" for c in name):
            raise ConfigError("a user name is 1-64 letters, digits or . _ - @")
        if any(t["name"] == name for t in self.active()):
            raise ConfigError(f"user {name!r} already has an active token; revoke it first")
        token = secrets.token_urlsafe(32)
        self._write([*self._read(), {"name": name, "role": role, "sha256": _digest(token), "created": time.time(),
                                     "revoked": None}])
        return token

    def revoke(self, name: str) -> int:
        tokens = self._read()
        n = 0
        for t in tokens:
            if t["name"] == name and not t.get("revoked"):
                t["revoked"] = time.time()
                n += 1
        if n:
            self._write(tokens)
        return n

    def verify(self, token: str | None) -> User | None:
        if not token:
            return None
        d = _digest(token)
        for t in self.active():
            if hmac.compare_digest(t["sha256"], d):
                return User(t["name"], t["role"])
        return None
