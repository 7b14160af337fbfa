"""The floor: the issue's best reference row, "raw ASGI + aiohttp client, bare pass-through".

No auth, limiter, metrics, accounting or log: the body goes upstream as sent, the answer comes
back as received (a stream chunk by chunk, as aiohttp hands it over). It runs under uvicorn with
the gateway's own server settings, on the gateway's core, in every scenario, so that the gateway's
CPU can be judged as a multiple of this floor measured on the same machine in the same run: the
issue's goals (0.3 ms a plain request, 0.5 ms a stream) against its floor (0.10 and 0.22 ms) are
3.0x and 2.3x, whatever the speed of the machine.

    python bench/bare.py --port 9200 --upstream http://127.0.0.1:9100/v1 --key KEY
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp
import uvicorn

Scope = dict[str, Any]


class Bare:
    def __init__(self, upstream: str, key: str) -> None:
        self.url = upstream.rstrip("/") + "/chat/completions"
        self.headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        parts = []
        while True:
            message = await receive()
            parts.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        assert self.session is not None
        async with self.session.post(self.url, data=b"".join(parts), headers=self.headers) as resp:
            ctype = resp.headers.get("content-type", "application/json").encode()
            if ctype.startswith(b"text/event-stream"):
                start = {"type": "http.response.start", "status": resp.status}
                await send({**start, "headers": [(b"content-type", ctype)]})
                async for chunk in resp.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
                return
            body = await resp.read()
            headers = [(b"content-type", ctype), (b"content-length", b"%d" % len(body))]
            await send({"type": "http.response.start", "status": resp.status, "headers": headers})
            await send({"type": "http.response.body", "body": body})

    async def lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                connector = aiohttp.TCPConnector(limit=0)
                self.session = aiohttp.ClientSession(connector=connector)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.session is not None:
                    await self.session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:9100/v1")
    parser.add_argument("--key", required=True, help="the upstream key")
    args = parser.parse_args()
    uvicorn.run(
        Bare(args.upstream, args.key),
        host="127.0.0.1",
        port=args.port,
        access_log=False,  # as the gateway runs uvicorn (its own log is what it writes)
        log_level="warning",
    )


if __name__ == "__main__":
    main()
