"""An OTLP/HTTP collector for benchmarks that keeps nothing: every POST gets 200 and an empty
ExportTraceServiceResponse (zero bytes of protobuf), so the traced gateway's export costs what
it costs against a collector that keeps up.

    python bench/otlp_sink.py --port 4318
"""

from __future__ import annotations

import argparse

from aiohttp import web


async def _export(request: web.Request) -> web.Response:
    await request.read()
    request.app["spans_bytes"] += request.content_length or 0
    return web.Response(body=b"", content_type="application/x-protobuf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app["spans_bytes"] = 0
    app.router.add_post("/v1/traces", _export)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
