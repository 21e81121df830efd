"""Sign-in: an API token exchanged for a server-side session (the cookie holds only its random id)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse

from ..auth import cookie_name
from ..gate import client_of
from ..state import Server, current_user, server

router = APIRouter()


@router.post("/api/login", summary="Exchange an API token for a sign-in session (browser pages)",
             responses={401: {"description": "unknown or revoked token"}, 429: {"description": "too many failures"}})
async def login(request: Request, srv: Server = Depends(server)) -> Response:
    if srv.config.auth == "off":
        raise HTTPException(409, "this server runs without authentication (--auth off): nothing to sign in to")
    try:
        body = await request.json()
        token, name = str(body["token"]), body.get("name")
        name = None if name in (None, "") else str(name)[:64]
    except Exception:  # noqa: BLE001
        raise HTTPException(422, "expected {token, name?}") from None
    keys = [f"addr:{client_of(request.scope)}", *([f"name:{name}"] if name else [])]
    made = srv.sessions.create(token)             # a valid sign-in always passes; only failures count
    if made is None or (name is not None and made[1].name != name):
        if made is not None:
            srv.sessions.end(made[0])
        wait = srv.failures.wait(*keys)
        if wait:
            raise HTTPException(429, f"too many failed sign-ins; retry in {wait} s",
                                headers={"Retry-After": str(wait)})
        srv.failures.fail(*keys)
        raise HTTPException(401, "unknown or revoked token")
    sid, user = made
    response = JSONResponse({"user": user.name, "role": user.role})
    response.set_cookie(cookie_name(request.url.scheme), sid, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https",
                        path="/", max_age=int(srv.config.session_hours * 3600))
    return response


@router.post("/api/logout", summary="End this sign-in session (its cookie stops working everywhere)")
def logout(request: Request, srv: Server = Depends(server)) -> Response:
    ended = srv.sessions.end(request.cookies.get(cookie_name(request.url.scheme)))
    response = JSONResponse({"signed_out": ended})
    # a __Host- cookie is replaced only by a Set-Cookie that is Secure itself
    response.delete_cookie(cookie_name(request.url.scheme), path="/", secure=request.url.scheme == "https",
                           httponly=True, samesite="strict")
    return response


@router.get("/api/whoami", summary="Who this request is signed in as")
def whoami(request: Request, srv: Server = Depends(server)) -> dict:
    user = current_user(request)
    return {"auth": srv.config.auth != "off", "user": user.name if user else None,
            "role": user.role if user else None}
