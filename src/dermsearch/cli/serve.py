"""`dermsearch serve` and `dermsearch token`: the web app on an index, and its API tokens."""

from __future__ import annotations

import logging
import sys
import time

from .common import UsageError, err
from .options import Common, index_dir, runtime_of

__all__ = ["register", "cmd_serve", "cmd_token"]


def register(sub, common: Common) -> None:
    sv = sub.add_parser("serve", parents=[common.index, common.split, common.device, common.mode],
                        help="run the web app and REST API (FastAPI) on an index")
    sv.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--max-upload-mb", type=float, default=20.0)
    sv.add_argument("--allowed-host", action="append", default=[], metavar="NAME", help="a name this server may be "
                    "reached by (Host header), besides localhost, 127.0.0.1, ::1 and --host; repeatable")
    sv.add_argument("--auth", choices=["auto", "on", "off"], default="auto", help="require an API token: auto "
                    "(default) when the index has active tokens ('dermsearch token create'); a non-loopback --host "
                    "always requires them")
    sv.add_argument("--query-split", nargs="+", metavar="NAME", help="/rate draws its queries from these splits "
                    "only (needs --split)")
    sv.add_argument("--concurrency", type=int, default=2, help="searches computed at once (default 2)")
    sv.add_argument("--queue", type=int, default=8, help="searches waiting beyond those; more get 429 (default 8)")
    sv.add_argument("--rate-limit", type=int, default=120, metavar="N", help="searches per minute per client (the "
                    "token's user, else the address); 0: no limit (default 120)")
    sv.add_argument("--dask", metavar="SCHEDULER_ADDRESS", help="shard the index across this Dask cluster's "
                    "workers and search there (exact, same results as local)")
    sv.set_defaults(handler=cmd_serve)

    tk = sub.add_parser("token", help="API tokens for 'dermsearch serve' (hashed at rest)",
                        description="Create, list or revoke the API tokens that 'dermsearch serve' accepts for an "
                                    "index. A token is printed once, when created; only its SHA-256 is stored.")
    tks = tk.add_subparsers(dest="action", required=True)
    create = tks.add_parser("create", parents=[common.index], help="a new token for a user (printed once)")
    create.add_argument("--name", required=True, help="the user (a rater's identity in the ratings)")
    create.add_argument("--role", choices=["rater", "admin"], default="rater",
                        help="rater (search, rate) or admin (also export ratings and keys)")
    revoke = tks.add_parser("revoke", parents=[common.index], help="revoke a user's tokens (effective at once)")
    revoke.add_argument("--name", required=True)
    listing = tks.add_parser("list", help="users, roles, dates (never the tokens)")
    index_dir(listing)
    tk.set_defaults(handler=cmd_token)


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


def cmd_serve(args) -> int:
    from ..errors import require

    uvicorn = require("uvicorn", "web", "dermsearch serve")
    require("fastapi", "web", "dermsearch serve")
    from ..search import Searcher
    from ..web.app import WebConfig, create_app
    from ..web.auth import TokenStore

    loopback = args.host in ("127.0.0.1", "localhost", "::1")
    if not loopback and (args.auth == "off" or not TokenStore.for_index(args.index).active()):
        raise UsageError(f"--host {args.host} would expose the archive beyond this machine without authentication. "
                         f"Create tokens first ('dermsearch token create {args.index} --name NAME --role rater', "
                         f"and one with --role admin), then serve with --auth auto or on; see docs/deploy.md")

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
                                           auth="on" if not loopback else args.auth, rating_query_ids=rating_ids,
                                           rate_limit=args.rate_limit),
                     searcher=Searcher(args.index, runtime=runtime_of(args), mode=args.mode,
                                       dask=args.dask))
    if not loopback:
        err.print(f"binding {args.host}: API tokens required; serve it over TLS (a reverse proxy: docs/deploy.md) "
                  "and name the proxy's host with --allowed-host", highlight=False)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    access = logging.getLogger("dermsearch.web.access")   # one line per request, with the user
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    err.print(f"serving {args.index} on http://{args.host}:{args.port}/ (API docs at /docs)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
