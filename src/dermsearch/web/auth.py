"""API tokens for ``dermsearch serve``: named users with a role, hashed at rest.

A token is 32 random bytes (URL-safe base64, shown once when created). The store keeps only its
SHA-256 (the tokens are high-entropy, so a fast hash suffices; no salt is needed to stop a lookup
table), with the user's name, role (``rater`` or ``admin``), creation and revocation times, in
``web-tokens.json`` beside the index (written atomically, mode 0600). A request authenticates with
``Authorization: Bearer TOKEN`` or, for the browser pages, a server-side session: ``/api/login``
exchanges a token for a random session id (the HttpOnly cookie), which expires, ends at logout, and
ends with its token's revocation. The store fails closed: a missing file means no valid token (every
protected request is refused), and an unreadable or corrupt one is a :class:`ConfigError`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..io import write_json

__all__ = ["TokenStore", "User", "ROLES", "TOKEN_FILE", "COOKIE", "cookie_name", "SessionStore", "FailureThrottle"]

ROLES = ("rater", "admin")
TOKEN_FILE = "web-tokens.json"
COOKIE = "dermsearch_session"


def cookie_name(scheme: str) -> str:
    """The session cookie's name: over https the ``__Host-`` form, which a browser keeps only when it is
    Secure, for this host alone and path /; so no sibling (sub)domain can plant a session of its own.
    Over https only that name is read."""
    return "__Host-" + COOKIE if scheme == "https" else COOKIE


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
        self._cache: tuple[tuple[int, int, int], list[dict]] | None = None

    @classmethod
    def for_index(cls, index_dir: str | os.PathLike) -> TokenStore:
        return cls(Path(index_dir) / TOKEN_FILE)

    def _read(self) -> list[dict]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return []
        # revocations take effect at once: every write is a new file (atomic), so its inode and size
        # tell it apart from the cached one even within one tick of the file system's clock
        key = (st.st_mtime_ns, st.st_ino, st.st_size)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._parse())
        return self._cache[1]

    def _parse(self) -> list[dict]:
        try:
            tokens = json.loads(self.path.read_text())["tokens"]
            if not isinstance(tokens, list) or not all(isinstance(t, dict) and isinstance(t["sha256"], str) and
                                                       isinstance(t["name"], str) and t["role"] in ROLES
                                                       for t in tokens):
                raise ValueError("unexpected entries")
            return tokens
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{self.path} is not a readable token file ({type(e).__name__}: {e}); restore it, or "
                              "delete it and create tokens again with 'dermsearch token create'") from None

    def check(self) -> int:
        """The number of active tokens; a :class:`ConfigError` when the file is corrupt."""
        return len(self.active())

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
        return self.verify_digest(_digest(token))

    def verify_digest(self, digest: str) -> User | None:
        """The active token's user with this SHA-256, or None (revoked, unknown, or no file)."""
        for t in self.active():
            if hmac.compare_digest(t["sha256"], digest):
                return User(t["name"], t["role"])
        return None


class SessionStore:
    """Server-side sign-in sessions: a random id (the cookie) -> the token's hash and an expiry.
    A session is valid only while its token is: revoking the token ends every session made with it.
    One token holds at most ``per_token`` sessions (its oldest end first), so no single token's
    sign-ins can push every other user's sessions out of the table (``most`` in all)."""

    def __init__(self, tokens: TokenStore, hours: float = 12.0, most: int = 10_000, per_token: int = 32):
        self.tokens, self.seconds, self.most, self.per_token = tokens, hours * 3600, most, per_token
        self._sessions: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def create(self, token: str) -> tuple[str, User] | None:
        user = self.tokens.verify(token)
        if user is None:
            return None
        sid = secrets.token_urlsafe(32)
        now = time.time()
        digest = _digest(token)
        with self._lock:
            mine = [k for k, v in self._sessions.items() if v[0] == digest]     # oldest first (insertion order)
            for k in mine[:max(0, len(mine) - self.per_token + 1)]:
                self._sessions.pop(k)
            if len(self._sessions) >= self.most:              # drop expired ones, then the oldest
                self._sessions = {k: v for k, v in self._sessions.items() if v[1] > now}
                while len(self._sessions) >= self.most:
                    self._sessions.pop(next(iter(self._sessions)))
            self._sessions[_digest(sid)] = (digest, now + self.seconds)
        return sid, user

    def user(self, sid: str | None) -> User | None:
        if not sid:
            return None
        key = _digest(sid)
        with self._lock:
            entry = self._sessions.get(key)
            if entry is not None and entry[1] <= time.time():
                self._sessions.pop(key, None)
                entry = None
        return None if entry is None else self.tokens.verify_digest(entry[0])

    def end(self, sid: str | None) -> bool:
        with self._lock:
            return self._sessions.pop(_digest(sid), None) is not None if sid else False


class FailureThrottle:
    """Failed sign-ins per key (an address, a user name): after ``limit`` failures within ``window``
    seconds, further failed attempts wait (429) until the oldest of them leaves the window; callers
    check a token first, so a valid one always passes."""

    def __init__(self, limit: int = 5, window: float = 300.0):
        self.limit, self.window = limit, window
        self._fails: dict[str, deque] = {}
        self._lock = threading.Lock()

    def wait(self, *keys: str) -> int:
        """Seconds until any of ``keys`` may try again; 0: now."""
        now = time.monotonic()
        worst = 0.0
        with self._lock:
            for key in keys:
                q = self._fails.get(key)
                while q and q[0] <= now - self.window:
                    q.popleft()
                if q is not None and len(q) >= self.limit:
                    worst = max(worst, q[-self.limit] + self.window - now)
        return math.ceil(worst) if worst > 0 else 0

    def fail(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._fails) > 10_000:                       # forget keys with no recent failure
                self._fails = {k: q for k, q in self._fails.items() if q and q[-1] > now - self.window}
            for key in keys:
                self._fails.setdefault(key, deque(maxlen=self.limit * 2)).append(now)
