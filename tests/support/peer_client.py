"""Run inside a test host's network namespace: the official ``ollama`` client against a server.

    python peer_client.py URL chat|show|tags MODEL [--token T] [--num-predict N] [--header K=V]

Prints one JSON object: the status and what came back (streamed chunk count, content), or the
status and message of the error the client raised. Never prints a traceback for an HTTP error.
"""

from __future__ import annotations

import argparse
import json
import sys

import httpx
import ollama


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("action", choices=["chat", "show", "tags"])
    parser.add_argument("model", nargs="?", default="")
    parser.add_argument("--token", default="")
    parser.add_argument("--num-predict", type=int, default=6)
    parser.add_argument("--header", action="append", default=[])
    args = parser.parse_args()
    headers = dict(item.split("=", 1) for item in args.header)
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    client = ollama.Client(host=args.url, headers=headers or None)
    result: dict[str, object]
    try:
        if args.action == "chat":
            chunks = list(client.chat(
                args.model, messages=[{"role": "user", "content": "Say hi."}], stream=True,
                options={"temperature": 0, "seed": 1, "num_predict": args.num_predict}))
            result = {"status": 200, "chunks": len(chunks),
                      "content": "".join(chunk.message.content or "" for chunk in chunks),
                      "done": bool(chunks and chunks[-1].done),
                      "eval_count": chunks[-1].eval_count if chunks else None}
        elif args.action == "show":
            info = client.show(args.model)
            result = {"status": 200, "family": info.details.family if info.details else None}
        else:
            result = {"status": 200, "models": [m.model for m in client.list().models]}
    except ollama.ResponseError as exc:
        result = {"status": exc.status_code, "error": exc.error}
    except (ConnectionError, httpx.TransportError) as exc:
        result = {"status": 0, "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
