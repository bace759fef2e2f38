"""WebSocket client on the `websockets` sans-I/O protocol, over a counted `Connection`.

Sends `start`; on a broken connection reconnects and sends `resume` with the client's
resume point (the stream and the last seq received); `cancel_after` (tokens) sends
`cancel` mid-stream.
"""

from __future__ import annotations

from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Response as WSResponse
from websockets.uri import parse_uri

from clients.base import Client
from clients.http import HTTPLayer
from clients.net import Connection
from clients.recorder import StreamRecord
from streams.errors import ProtocolError, TransportError
from streams.params import GenParams
from transports import websocket as codec
from transports.token import TokenRecord


class WebSocketClient(Client):
    key = "websocket"
    _open: tuple[ClientProtocol, Connection] | None = None

    async def abandon(self, http: HTTPLayer, rec: StreamRecord) -> None:
        """`cancel` is a message on the open connection, then a normal close (RFC 6455 7.1.2)."""
        rec.abandoned()
        if self.options.abandon == "cancel" and self._open is not None:
            proto, conn = self._open
            proto.send_text(codec.encode_cancel().encode())
            proto.send_close(1000)
            await _flush(proto, conn)
        await http.close_conn()

    async def attempt(self, http: HTTPLayer, params: GenParams, rec: StreamRecord) -> str:
        # TTFT runs from here, before the connection opens, as it does for the HTTP clients
        # (whose request() connects): the TCP and TLS handshakes are part of the first token
        rec.request_sent()
        conn = await http.open_raw()
        extensions = [ClientPerMessageDeflateFactory()] if self.options.ws_compress else None
        scheme = "wss" if http.target.secure else "ws"  # RFC 6455 3: TLS is the connector's
        proto = ClientProtocol(
            parse_uri(f"{scheme}://{http.target.authority}/ws"),
            extensions=extensions,
            max_size=2**20,
        )
        handshake = proto.connect()
        for name, value in http.target.authorization():  # a Python client can set headers
            handshake.headers[name] = value
        proto.send_request(handshake)
        self._open = (proto, conn)
        await _flush(proto, conn)
        request_index = http.requests - 1
        opened = False
        while True:
            data = await conn.read()
            if data:
                proto.receive_data(data)
            else:
                proto.receive_eof()
            t_ns, t_perf = conn.last_recv_ns, conn.last_recv_perf_ns
            for event in proto.events_received():
                if isinstance(event, WSResponse):
                    if proto.handshake_exc is not None:
                        raise TransportError(
                            f"WebSocket handshake failed: {proto.handshake_exc}", retryable=False
                        )
                    opened = True
                    resume = self.resume
                    first = (
                        codec.encode_resume(resume.stream_id, resume.after)
                        if resume.stream_id
                        else codec.encode_start(params)
                    )
                    proto.send_text(first.encode())
                elif isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                    http.body_bytes_down += len(event.data)  # the message, frame header apart
                    reason = self._on_message(bytes(event.data), rec, t_ns, t_perf, request_index)
                    if reason is not None:
                        proto.send_close(1000)
                        await _flush(proto, conn)
                        return reason
            await _flush(proto, conn)
            if not data:
                raise TransportError(
                    "connection closed" + ("" if opened else " during the handshake")
                )

    def _on_message(
        self, data: bytes, rec: StreamRecord, t_ns: int, t_perf: int, request_index: int
    ) -> str | None:
        msg = codec.parse_server_message(data)
        if isinstance(msg, TokenRecord):
            self.deliver(rec, msg, t_ns, t_perf, request_index)
        elif isinstance(msg, codec.Started):
            self.stream_known(rec, msg.stream)
        elif isinstance(msg, codec.Done):
            return msg.reason
        elif isinstance(msg, codec.Error):
            raise TransportError(f"server error: {msg.message}", retryable=False)
        return None


async def _flush(proto: ClientProtocol, conn: Connection) -> None:
    for chunk in proto.data_to_send():
        if chunk:
            await conn.write(chunk)


__all__ = ["ProtocolError", "WebSocketClient"]
