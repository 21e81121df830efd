"""Who may come in, and when: authentication, admission and the access log, as one pure ASGI
middleware inside :class:`~dermsearch.web.security.RequestGuard` (so its refusals carry the
security headers too), deciding from the request line and headers alone, before the body is read.

- **Authentication** (unless the server runs with ``auth="off"``): a bearer token, or the session
  cookie of ``/api/login``. No valid token, no access: revoked tokens, a deleted token file and no
  tokens at all lock every protected path (401); an unreadable token file answers 503. Repeated bad
  tokens from one address are throttled (429); a valid token always passes.
- **Roles**: the rating exports are for admins only (403).
- **Admission** for the paths that do work (a search, a rating session, a rating post): the
  per-user (else per-address) rate, the pool's queue, and a signed-in user's share of it (at most
  half of pool and queue in progress at once) are checked before a byte of the body is read; a
  refusal is a 429 with ``Retry-After``.
- **Access log**: one line per request, every field escaped (no forged lines).
"""

from __future__ import annotations

import json
import logging
import time
from http.cookies import CookieError, SimpleCookie

from ..errors import ConfigError
from .auth import TOKEN_FILE, cookie_name

__all__ = ["Gate", "PUBLIC", "ADMIN", "ADMITTED", "escape", "client_of"]

access_log = logging.getLogger("dermsearch.web.access")
log = logging.getLogger("dermsearch.web")
PUBLIC = frozenset({"/", "/rate", "/login", "/api/login", "/api/logout", "/api/whoami", "/favicon.ico"})
ADMIN = frozenset({"/api/ratings.csv", "/api/ratings-key.csv"})
ADMITTED = frozenset({"/api/search", "/api/ratings/session", "/api/ratings"})


def escape(text: str) -> str:
    """A log field that cannot end a line or pose as another field: non-printables, backslashes,
    quotes and spaces as escapes."""
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == " ":
            out.append("\\x20")
        elif ch == '"':
            out.append('\\"')
        elif ch.isprintable() and ch.isascii():
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out) or "-"


def client_of(scope) -> str:
    return (scope.get("client") or ("-", 0))[0]


def _cookie(headers: dict[str, str], scheme: str) -> str | None:
    try:
        jar = SimpleCookie(headers.get("cookie", ""))
    except CookieError:
        return None
    name = cookie_name(scheme)
    return jar[name].value if name in jar else None


class Gate:
    def __init__(self, app, server):
        self.app, self.srv = app, server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = {"code": 0}

        async def logged_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        user = None
        try:
            user = await self._handle(scope, receive, logged_send)
        finally:
            path = scope.get("raw_path") or scope["path"].encode("utf-8", "backslashreplace")
            access_log.info("%s %s %s %s %d %.1fms", escape(client_of(scope)), escape(user.name if user else "-"),
                            escape(scope["method"]), escape(path.decode("latin-1")), status["code"] or 500,
                            1e3 * (time.perf_counter() - t0))

    async def _handle(self, scope, receive, send):
        srv, path = self.srv, scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        user = None
        if srv.config.auth != "off":
            try:
                user, refusal = self._authenticate(scope, headers)
            except ConfigError as e:
                # the whole reason (with the server's path) in the server's log; the client learns
                # only that sign-in is down, never where the index lives
                log.error("%s", escape(str(e)))
                await _reply(send, 503, f"sign-in is unavailable: the server's token file ({TOKEN_FILE}) "
                                        "cannot be read; its administrator must restore or recreate it")
                return None
            if refusal is not None:
                await _reply(send, *refusal)
                return user
        scope = {**scope, "state": {**scope.get("state", {}), "user": user}}
        if path in ADMITTED and scope["method"] == "POST":
            who = f"user:{user.name}" if user else f"addr:{client_of(scope)}"
            wait = srv.buckets.take(who)
            if wait:
                await _reply(send, 429, f"more than {srv.config.rate_limit} searches, rating sessions or rating "
                                        f"posts a minute from this client; retry in {wait} s",
                             headers=[(b"retry-after", str(wait).encode())])
                return user
            if srv.pending["n"] >= srv.config.concurrency + srv.config.queue:
                await _reply(send, 429, "too many searches in progress; retry shortly",
                             headers=[(b"retry-after", b"1")])
                return user
            mine = srv.in_flight.get(user.name, 0) if user else 0
            if user and mine >= srv.per_user:
                await _reply(send, 429, f"{mine} of your searches, rating sessions or posts are already in "
                                        "progress; retry when one has finished", headers=[(b"retry-after", b"1")])
                return user
            srv.pending["n"] += 1
            if user:
                srv.in_flight[user.name] = mine + 1
            try:
                await self.app(scope, receive, send)
            finally:
                srv.pending["n"] -= 1
                if user:
                    left = srv.in_flight[user.name] - 1
                    if left:
                        srv.in_flight[user.name] = left
                    else:
                        del srv.in_flight[user.name]
            return user
        await self.app(scope, receive, send)
        return user

    def _authenticate(self, scope, headers):
        """(user or None, None) to go on, or (user, (status, detail[, csp, headers])) to refuse."""
        srv, path = self.srv, scope["path"]
        srv.tokens.active()           # an unreadable token file: 503 for everyone (cached by its stat: cheap)
        header = headers.get("authorization", "")
        addr = f"addr:{client_of(scope)}"
        if header.lower().startswith("bearer "):
            # a valid token always passes (behind a proxy every client shares one address: others'
            # failures must not lock a user out); only failures count, and over the limit get 429
            user = srv.tokens.verify(header[7:].strip())
            if user is None:
                wait = srv.failures.wait(addr)
                if wait:
                    return None, (429, f"too many failed sign-ins from this address; retry in {wait} s",
                                  [(b"retry-after", str(wait).encode())])
                srv.failures.fail(addr)
        else:
            user = srv.sessions.user(_cookie(headers, scope.get("scheme", "http")))
        public = path in PUBLIC or path.startswith("/static/")
        if user is None and not public:
            return None, (401, "authentication required: send 'Authorization: Bearer TOKEN' or sign in at /login",
                          [(b"www-authenticate", b"Bearer")])
        if path in ADMIN and not user.is_admin:
            return user, (403, "only an admin token may export ratings and keys")
        return user, None


async def _reply(send, status: int, detail: str, headers=()) -> None:
    """A JSON refusal (the guard outside adds the security headers)."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})
