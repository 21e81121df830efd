"""Request guards of the web app, as one pure ASGI middleware (runs before any route does work).

- **Host allow-list**: a request whose ``Host`` header is not an allowed name is refused (400):
  DNS rebinding cannot reach the server under a foreign name.
- **Same origin for state changes**: a POST/PUT/PATCH/DELETE carrying an ``Origin`` (or, failing
  that, a ``Referer``) that is not this server is refused (403).
- **Body limit before work**: a body announced larger than the limit (``Content-Length``) is refused
  (413) before a byte is read; a body without a length is counted as it streams and cut off at the
  limit, so no more than the limit is ever buffered or spooled to disk.
- **Security headers** on every response: a Content-Security-Policy without inline script,
  ``nosniff``, ``frame-ancestors 'none'`` / ``X-Frame-Options: DENY``, ``no-referrer``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from urllib.parse import urlsplit

__all__ = ["RequestGuard", "CSP", "SECURITY_HEADERS"]

CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
_DOCS = ("/docs", "/redoc")     # FastAPI's API pages load their own assets: no CSP there


def _host_name(value: str) -> str:
    """'Example.org:8000' -> 'example.org'; '[::1]:8000' -> '::1'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class RequestGuard:
    def __init__(self, app, allowed_hosts: Iterable[str] | None, max_body_bytes: int):
        self.app = app
        self.allowed = None if allowed_hosts is None else {_host_name(h) for h in allowed_hosts}
        self.max_body = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if self.allowed is not None and _host_name(host) not in self.allowed:
            return await _reply(send, 400, "unknown host: this server answers only to its configured names")
        if scope["method"] in _UNSAFE:
            origin = headers.get("origin") or headers.get("referer")     # "null" (sandboxed pages) never matches
            if origin and urlsplit(origin).netloc.lower() != host.lower():
                return await _reply(send, 403, "cross-origin request refused")
        length = headers.get("content-length")
        if length is not None:
            try:
                if int(length) > self.max_body:
                    return await _reply(send, 413, f"request body larger than {self.max_body} bytes")
            except ValueError:
                return await _reply(send, 400, "invalid Content-Length")
        seen = 0
        over = replied = False

        async def limited_receive():
            # past the limit the body is cut short (nothing more is read or buffered), and the
            # app's answer, whatever it is, is replaced by a 413
            nonlocal seen, over
            if over:
                return {"type": "http.request", "body": b"", "more_body": False}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    over = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def guarded_send(message):
            nonlocal replied
            if over:
                if not replied and message["type"] == "http.response.start":
                    replied = True
                    await _reply(send, 413, f"request body larger than {self.max_body} bytes")
                return
            if message["type"] == "http.response.start":
                extra = list(SECURITY_HEADERS)
                if not scope["path"].startswith(_DOCS):
                    extra.append((b"content-security-policy", CSP.encode()))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, limited_receive, guarded_send)


async def _reply(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *SECURITY_HEADERS, (b"content-security-policy", CSP.encode())]})
    await send({"type": "http.response.body", "body": body})
