"""A cap on request bodies, counted as they stream in (a 10 MB upload is never read whole first).

A declared Content-Length over the cap is refused before any body is read; a body that grows
past it (chunked, or a lying length) is refused the moment it does. Either way the client gets
413 with a JSON message. What the client still sends is read and dropped (up to a bound, then
the connection closes), so it can finish sending and read the answer instead of a reset.
"""
from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Bytes read and dropped after a refusal before giving up on the client and closing.
DRAIN_LIMIT_BYTES = 64 * 1024 * 1024


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await _drain(receive)
            await _refuse(send, self._message(int(declared)))
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    if message.get("more_body", False):
                        await _drain(receive)
                    # An HTTPException passes through FastAPI's body parsing as it is.
                    raise HTTPException(413, self._message(None))
            return message

        await self.app(scope, counted, send)

    def _message(self, size: int | None) -> str:
        what = f"the request body is {size} bytes" if size is not None else "the request body is too large"
        return (f"{what}, over this server's {self.max_bytes / 1024 / 1024:g} MB limit: "
                "send a smaller photo (or resize it first)")


async def _drain(receive: Receive) -> None:
    dropped = 0
    while dropped < DRAIN_LIMIT_BYTES:
        message = await receive()
        if message["type"] != "http.request":
            return
        dropped += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def _refuse(send: Send, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": 413, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]})
    await send({"type": "http.response.body", "body": body})
