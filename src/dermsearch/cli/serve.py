"""`dermsearch serve` and `dermsearch token`: the web app on an index, and its API tokens."""

from __future__ import annotations

import logging
import sys
import time

from ..config import WebConfig
from ..names import ROLES
from .common import UsageError, check_port_free, count, err, positive_float
from .options import Common, add_config_flags, index_dir, runtime_of

__all__ = ["register", "cmd_serve", "cmd_token"]


def register(sub, common: Common) -> None:
    d = WebConfig()
    sv = sub.add_parser("serve", parents=[common.index, common.split, common.device, common.mode],
                        help="run the web app and REST API (FastAPI) on an index")
    sv.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=_port, default=8000, help="TCP port (default 8000)")
    sv.add_argument("--max-upload-mb", type=positive_float, default=d.max_upload_bytes / 2**20,
                    help="largest upload (default %(default)s)")
    sv.add_argument("--allowed-host", action="append", default=[], metavar="NAME", help="a name this server may be "
                    "reached by (Host header), besides localhost, 127.0.0.1, ::1 and --host; repeatable")
    add_config_flags(sv, WebConfig, ("auth",), helps={"auth": "on (default): every data path needs an API token or a "
                     "sign-in (with no active token, one is created for 'admin' and its sign-in link printed once); "
                     "off: anyone who reaches the port reads everything, so only with a loopback --host and no "
                     "--trusted-proxy"})
    sv.add_argument("--trusted-proxy", action="append", default=[], metavar="ADDR", help="a reverse proxy's address "
                    "or network (e.g. 127.0.0.1): only from it are X-Forwarded-For/-Proto believed; repeatable "
                    "(default: none, the TCP peer is the client)")
    sv.add_argument("--query-split", nargs="+", metavar="NAME", help="/rate draws its queries from these splits "
                    "only (needs --split)")
    add_config_flags(sv, WebConfig, ("concurrency", "queue", "rate_limit"))
    sv.add_argument("--dask", metavar="SCHEDULER_ADDRESS", help="shard the index across this Dask cluster's "
                    "workers and search there (--mode exact or fast; the same results as local)")
    sv.set_defaults(handler=cmd_serve)

    tk = sub.add_parser("token", help="API tokens for 'dermsearch serve' (hashed at rest)",
                        description="Create, list or revoke the API tokens that 'dermsearch serve' accepts for an "
                                    "index. A token is printed once, when created; only its SHA-256 is stored.")
    tks = tk.add_subparsers(dest="action", required=True)
    create = tks.add_parser("create", parents=[common.index], help="a new token for a user (printed once)")
    create.add_argument("--name", required=True, help="the user (a rater's identity in the ratings)")
    create.add_argument("--role", choices=ROLES, default="rater",
                        help="rater (search, rate) or admin (also export ratings and keys)")
    revoke = tks.add_parser("revoke", parents=[common.index], help="revoke a user's tokens (effective at once)")
    revoke.add_argument("--name", required=True)
    listing = tks.add_parser("list", help="users, roles, dates (never the tokens)")
    index_dir(listing)
    tk.set_defaults(handler=cmd_token)


def _port(text: str) -> int:
    import argparse

    port = count(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"{text}: a port is 0..65535")
    return port


def cmd_token(args) -> int:
    from ..index import Index
    from ..web.auth import TokenStore

    Index.open(args.index)                  # a real index, or a clear error
    store = TokenStore.for_index(args.index)
    if args.action == "create":
        token = store.create(args.name, args.role)
        err.print(f"token for {args.name} ({args.role}); it is shown only now:", highlight=False)
        print(token)
    elif args.action == "revoke":
        n = store.revoke(args.name)
        if not n:
            raise UsageError(f"{args.name!r} has no active token")
        print(f"revoked {n} token(s) of {args.name}")
    else:
        for t in store.all():
            state = "revoked " + time.strftime("%Y-%m-%d", time.gmtime(t["revoked"])) if t.get("revoked") else "active"
            print(f"{t['name']}\t{t['role']}\tcreated {time.strftime('%Y-%m-%d', time.gmtime(t['created']))}\t{state}")
    return 0


def server_config(app, host: str, port: int):
    """uvicorn's settings for ``serve``: no proxy headers at the server level (the app believes them
    only from ``--trusted-proxy``), no Server header, logs by the app."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level="warning", proxy_headers=False, server_header=False,
                          forwarded_allow_ips="")


def _auth_check(args) -> int:
    """Refuse an open server beyond loopback; the number of active tokens (a corrupt file: an error)."""
    from ..web.auth import TokenStore

    loopback = args.host in ("127.0.0.1", "localhost", "::1")
    if args.auth == "off" and (not loopback or args.trusted_proxy):
        where = f"--host {args.host}" if not loopback else "a --trusted-proxy"
        raise UsageError(f"--auth off with {where} would expose the archive beyond this machine without "
                         f"authentication; serve with --auth on (the default; see docs/deploy.md)")
    return TokenStore.for_index(args.index).check() if args.auth == "on" else 0


def _announce(args, active: int) -> None:
    """The start-up message: how to sign in (a new admin token's link, once), or a loud warning."""
    from ..web.auth import TokenStore

    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    url = f"http://{shown}:{args.port}/" if ":" not in shown else f"http://[{shown}]:{args.port}/"
    if args.auth == "off":
        err.print(f"WARNING: authentication is OFF (--auth off): any user or program on this machine can read every "
                  f"image, rating and key at {url}", style="bold red", highlight=False)
    elif not active:
        token = TokenStore.for_index(args.index).create("admin", "admin")
        err.print(f"no active API token for {args.index}: created one for user 'admin' (role admin); it is shown "
                  f"only now. Sign in at:", highlight=False)
        print(f"    {url}login#token={token}", file=sys.stderr, flush=True)
    state = "authentication OFF" if args.auth == "off" else "sign-in required"
    err.print(f"serving {args.index} on {url} ({state}; API docs at /docs)", highlight=False)


def cmd_serve(args) -> int:
    from ..errors import require

    require("uvicorn", "web", "dermsearch serve")
    require("fastapi", "web", "dermsearch serve")
    from ..search import Searcher
    from ..web.app import create_app

    active = _auth_check(args)
    check_port_free(args.host, args.port)      # in use: one line and exit 2, before "serving ..." is printed
    rating_ids = None
    if args.query_split:
        from ..evaluate import read_split

        if not args.split:
            raise UsageError("--query-split needs --split")
        split = read_split(args.split)
        rating_ids = frozenset(i for i, sp in split.items() if sp in set(args.query_split))
    hosts = ("localhost", "127.0.0.1", "::1", *([] if args.host in ("0.0.0.0", "::") else [args.host]),
             *args.allowed_host)
    app = create_app(args.index, WebConfig(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                                           allowed_hosts=hosts, concurrency=args.concurrency, queue=args.queue,
                                           auth=args.auth, rating_query_ids=rating_ids, rate_limit=args.rate_limit,
                                           trusted_proxies=tuple(args.trusted_proxy)),
                     searcher=Searcher(args.index, runtime=runtime_of(args), mode=args.mode,
                                       dask=args.dask, max_checked=args.max_checked))
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        err.print(f"binding {args.host}: serve it over TLS (a reverse proxy: docs/deploy.md) and name the proxy's "
                  "host with --allowed-host", highlight=False)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    access = logging.getLogger("dermsearch.web.access")   # one line per request, with the user, fields escaped
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    _announce(args, active)
    import uvicorn

    uvicorn.Server(server_config(app, args.host, args.port)).run()
    return 0
