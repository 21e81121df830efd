"""`dermsearch serve` and `dermsearch token`: the web app on an index, and its API tokens."""

from __future__ import annotations

import logging
import sys
import time

from ..index import Index
from ..search import Searcher
from .common import UsageError, err

__all__ = ["cmd_serve", "cmd_token"]


def cmd_token(args) -> int:
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
    import uvicorn

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

        if not args.split_csv:
            raise UsageError("--query-split needs --split-csv")
        split = read_split(args.split_csv)
        rating_ids = frozenset(i for i, sp in split.items() if sp in set(args.query_split))
    hosts = ("localhost", "127.0.0.1", "::1", *([] if args.host in ("0.0.0.0", "::") else [args.host]),
             *args.allowed_host)
    app = create_app(args.index, WebConfig(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                                           allowed_hosts=hosts, concurrency=args.concurrency, queue=args.queue,
                                           auth="on" if not loopback else args.auth, rating_query_ids=rating_ids,
                                           rate_limit=args.rate_limit),
                     searcher=Searcher(args.index, device=args.device, mode="fast" if args.fast else "exact",
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
