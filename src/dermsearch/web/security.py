"""Request guards of the web app, as one pure ASGI middleware (the outermost: runs before any route,
and its headers go on every response, errors included).

- **Client address**: the TCP peer, unless that peer is a trusted proxy (``trusted_proxies``, default
  none): then the last ``X-Forwarded-For`` entry (the address the proxy itself saw) and its
  ``X-Forwarded-Proto``. A forwarded header from anyone else is ignored, so it cannot pick the
  address the rate limits count or the access log records.
- **Host allow-list**: a request whose ``Host`` header is not an allowed name is refused (400):
  DNS rebinding cannot reach the server under a foreign name.
- **Same origin for state changes**: a POST/PUT/PATCH/DELETE carrying an ``Origin`` (or, failing
  that, a ``Referer``) that is not this server is refused (403).
- **Body limit before work**: a body announced larger than the path's limit (``Content-Length``) is
  refused (413) before a byte is read; a body without a length is counted as it streams and cut
  off at the limit, so no more than the limit is ever buffered or spooled to disk. Only the search
  upload may be large; every other body is capped at ``small_body_bytes``.
- **Security headers** on every response (401, 403, 413, 429, 500 and 503 included): a
  Content-Security-Policy without inline script (the API docs pages get one that still keeps
  every request on this server), ``nosniff``, ``frame-ancestors 'none'`` / ``X-Frame-Options: DENY``,
  ``no-referrer``, and ``Cross-Origin-Resource-Policy: same-origin``.
- **No stack trace to a client**: an unhandled exception is logged and answered 500.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Iterable
from urllib.parse import urlsplit

__all__ = ["RequestGuard", "CSP", "DOCS_CSP", "SECURITY_HEADERS", "parse_networks"]

log = logging.getLogger("dermsearch.web")

CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
# Swagger UI starts from an inline script and ReDoc from a blob: worker; neither may fetch anything
# from elsewhere (ReDoc's footer logo lives on a CDN: img-src keeps it from loading)
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; child-src 'self' blob:; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
_DOCS = ("/docs", "/redoc")
Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def parse_networks(values: Iterable[str]) -> Networks:
    """'10.0.0.5', '10.0.0.0/8', '::1' -> networks; a ValueError names a bad entry."""
    out = []
    for v in values:
        try:
            out.append(ipaddress.ip_network(v.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{v!r} is not an IP address or network (e.g. 127.0.0.1 or 10.0.0.0/8)") from None
    return tuple(out)


def _host_name(value: str) -> str:
    """'Example.org:8000' -> 'example.org'; '[::1]:8000' -> '::1'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _in(address: str, networks: Networks) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in n for n in networks)


class RequestGuard:
    def __init__(self, app, allowed_hosts: Iterable[str] | None, max_body_bytes: int,
                 small_body_bytes: int = 64 * 1024, large_body_paths: Iterable[str] = ("/api/search",),
                 trusted_proxies: Networks = ()):
        self.app = app
        self.allowed = None if allowed_hosts is None else {_host_name(h) for h in allowed_hosts}
        self.max_body, self.small_body = max_body_bytes, small_body_bytes
        self.large_paths = frozenset(large_body_paths)
        self.trusted = tuple(trusted_proxies)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        csp = DOCS_CSP if scope["path"].startswith(_DOCS) else CSP
        if self.trusted:
            scope = self._forwarded(scope, headers)
            if scope is None:
                return await _reply(send, 400, "invalid X-Forwarded-For from the proxy", csp)
        host = headers.get("host", "")
        if self.allowed is not None and _host_name(host) not in self.allowed:
            return await _reply(send, 400, "unknown host: this server answers only to its configured names", csp)
        if scope["method"] in _UNSAFE:
            origin = headers.get("origin") or headers.get("referer")     # "null" (sandboxed pages) never matches
            if origin and urlsplit(origin).netloc.lower() != host.lower():
                return await _reply(send, 403, "cross-origin request refused", csp)
        limit = self.max_body if scope["path"] in self.large_paths else self.small_body
        length = headers.get("content-length")
        if length is not None:
            try:
                if int(length) > limit:
                    return await _reply(send, 413, f"request body larger than {limit} bytes", csp)
            except ValueError:
                return await _reply(send, 400, "invalid Content-Length", csp)
        seen = 0
        over = started = False

        async def limited_receive():
            # past the limit the body is cut short (nothing more is read or buffered), and the
            # app's answer, whatever it is, is replaced by a 413
            nonlocal seen, over
            if over:
                return {"type": "http.request", "body": b"", "more_body": False}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    over = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def guarded_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                if started:
                    return
                started = True
                if over:
                    return await _reply(send, 413, f"request body larger than {limit} bytes", csp)
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS,
                                                  (b"content-security-policy", csp.encode())]}
            elif over:
                return
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            log.exception("unhandled error on %s", scope["path"].encode("unicode_escape").decode("ascii"))
            if started:
                raise
            started = True
            await _reply(send, 500, "internal error", csp)

    def _forwarded(self, scope, headers):
        """The scope with the client a trusted proxy names; None when that proxy sent nonsense."""
        peer = (scope.get("client") or ("", 0))[0]
        if not _in(peer, self.trusted):
            return scope
        new = dict(scope)
        forwarded = headers.get("x-forwarded-for")
        if forwarded is not None:
            last = forwarded.split(",")[-1].strip()
            try:
                ipaddress.ip_address(last)
            except ValueError:
                return None
            new["client"] = (last, 0)
        proto = headers.get("x-forwarded-proto", "").strip().lower()
        if proto in ("http", "https"):
            new["scheme"] = proto
        return new


async def _reply(send, status: int, detail: str, csp: str = CSP, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers, *SECURITY_HEADERS, (b"content-security-policy", csp.encode())]})
    await send({"type": "http.response.body", "body": body})
