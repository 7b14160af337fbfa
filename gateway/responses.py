"""Writing a whole JSON response straight to ASGI `send`, without a framework in between."""

from __future__ import annotations

from starlette.types import Send

from gateway.errors import GatewayError

JSON = (b"content-type", b"application/json")


async def send_json(
    send: Send,
    status: int,
    body: bytes,
    headers: dict[str, str] | None = None,
) -> None:
    raw = [JSON, (b"content-length", str(len(body)).encode())]
    if headers:
        raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(send: Send, exc: GatewayError) -> None:
    await send_json(send, exc.status, exc.body(), exc.headers)
