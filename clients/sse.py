"""SSE client, following the EventSource processing model (WHATWG HTML 9.2).

Connects with `Accept: text/event-stream`; on a broken connection it reconnects after the
server's `retry:` delay (or its own backoff, whichever is longer) sending `Last-Event-ID`
as the parser committed it (kept in the client's resume point); a 204 or a wrong content
type ends it for good.
"""

from __future__ import annotations

from clients.base import Client, expect, request_for
from clients.http import HTTPLayer
from clients.recorder import StreamRecord
from streams.errors import TransportError
from streams.params import GenParams
from transports.sse import SSEParser
from transports.token import decode_token, loads


class SSEClient(Client):
    key = "sse"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.retry_ms: int | None = None  # the server's reconnection time, once it sent one

    def _backoff_s(self, failures: int) -> float:
        return max(super()._backoff_s(failures), (self.retry_ms or 0) / 1e3)

    async def attempt(self, http: HTTPLayer, params: GenParams, rec: StreamRecord) -> str:
        headers = [("Accept", "text/event-stream"), ("Cache-Control", "no-cache")]
        if self.resume.event_id:
            headers.append(("Last-Event-ID", self.resume.event_id))
        target, body = request_for("/sse", params, self.options.method)
        rec.request_sent()
        resp = await http.request(self.options.method, target, headers, body)
        if resp.status == 204:  # WHATWG: 204 No Content means "stop reconnecting"
            return "done"
        await expect(http, resp, 200, "text/event-stream")
        conn = http.conn
        assert conn is not None
        request_index = http.requests - 1
        parser = SSEParser()
        try:
            async for chunk in http.body():
                t_ns, t_perf = conn.last_recv_ns, conn.last_recv_perf_ns
                for event in parser.feed(chunk):
                    if event.data == "[DONE]":
                        return rec.end_reason or "done"
                    if event.type == "message":
                        tok = decode_token(loads(event.data))
                        self.deliver(rec, tok, t_ns, t_perf, request_index)
                    elif event.type == "cancelled":
                        rec.end_reason = str(loads(event.data).get("reason", "cancelled"))
        finally:
            self.resume.update(event_id=parser.last_event_id)
            self.retry_ms = parser.retry_ms if parser.retry_ms is not None else self.retry_ms
        raise TransportError("event stream ended before [DONE]")
