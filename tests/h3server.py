"""A scriptable HTTP/3 server for the tests: aioquic in the server role (its asyncio `serve`).

Routes (GET, query `n`): `/bytes?n=N` answers 200 with N bytes (16 KiB DATA frames);
`/hold` answers 200 and then sends nothing (the stream stays open); `/reset` answers 200,
then resets the stream (H3_REQUEST_CANCELLED); `/close` answers 200, then closes the whole
connection (H3_INTERNAL_ERROR, application close). Anything else is 404.

In-process: `await H3Server(cert, key).start()` -> its port, `stop()`. As a child (inside a
network namespace): `python -m tests.h3server HOST PORT CERT KEY` prints `ready PORT`.
"""

from __future__ import annotations

import asyncio
import sys
from urllib.parse import parse_qs, urlsplit

from aioquic.asyncio import QuicConnectionProtocol, serve
from aioquic.asyncio.server import QuicServer
from aioquic.h3.connection import H3_ALPN, ErrorCode, H3Connection
from aioquic.h3.events import H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ProtocolNegotiated, QuicEvent

CHUNK = 16384


class _Protocol(QuicConnectionProtocol):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.h3: H3Connection | None = None

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ProtocolNegotiated):
            self.h3 = H3Connection(self._quic)
        if self.h3 is None:
            return
        for h3_event in self.h3.handle_event(event):
            self._request(h3_event)

    def _request(self, event: H3Event) -> None:
        if not isinstance(event, HeadersReceived) or self.h3 is None:
            return
        fields = dict(event.headers)
        url = urlsplit(fields.get(b":path", b"/").decode())
        n = int(parse_qs(url.query).get("n", ["0"])[0])
        sid, h3 = event.stream_id, self.h3
        if url.path not in ("/bytes", "/hold", "/reset", "/close"):
            h3.send_headers(sid, [(b":status", b"404")], end_stream=True)
        else:
            h3.send_headers(sid, [(b":status", b"200"), (b"content-type", b"text/plain")])
        if url.path == "/bytes":
            body = bytes(i % 251 for i in range(n))
            for pos in range(0, n, CHUNK):
                h3.send_data(sid, body[pos : pos + CHUNK], end_stream=False)
            h3.send_data(sid, b"", end_stream=True)
        elif url.path == "/reset":
            self.transmit()  # the head first, then the reset
            self._quic.reset_stream(sid, ErrorCode.H3_REQUEST_CANCELLED)
        elif url.path == "/close":
            self.transmit()
            self._quic.close(error_code=ErrorCode.H3_INTERNAL_ERROR, reason_phrase="told to")
        self.transmit()


class H3Server:
    """The server on `host`:`port` (0: any free port) with the certificate chain `cert`."""

    def __init__(self, cert: str, key: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = QuicConfiguration(is_client=False, alpn_protocols=list(H3_ALPN))
        self.config.load_cert_chain(cert, key)
        self.host, self.port = host, port
        self.server: QuicServer | None = None

    async def start(self) -> int:
        self.server = await serve(self.host, self.port, configuration=self.config,
                                  create_protocol=_Protocol)  # fmt: skip
        assert self.server._transport is not None
        self.port = self.server._transport.get_extra_info("sockname")[1]
        return self.port

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None


async def _main(host: str, port: int, cert: str, key: str) -> None:
    server = H3Server(cert, key, host, port)
    print(f"ready {await server.start()}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    host, port, cert, key = sys.argv[1:5]
    asyncio.run(_main(host, int(port), cert, key))
