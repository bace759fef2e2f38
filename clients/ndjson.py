"""NDJSON client: reads one chunked response line by line; resumes with stream & after."""

from __future__ import annotations

from clients.base import Client, expect, request_for
from clients.http import HTTPLayer
from clients.recorder import StreamRecord
from streams.errors import TransportError
from streams.params import GenParams
from transports.ndjson import LineSplitter, parse_line
from transports.token import TokenRecord
from transports.websocket import Done, Started


class NDJSONClient(Client):
    key = "ndjson"

    async def attempt(self, http: HTTPLayer, params: GenParams, rec: StreamRecord) -> str:
        if self.resume.stream_id:  # resume: the same stream, after the last seq we hold
            resume = self.resume
            target, body = f"/ndjson?stream={resume.stream_id}&after={resume.after}", b""
            method = "GET"
        else:
            method = self.options.method
            target, body = request_for("/ndjson", params, method)
        rec.request_sent()
        resp = await http.request(method, target, [("Accept", "application/x-ndjson")], body)
        await expect(http, resp, 200, "application/x-ndjson")
        conn = http.conn
        assert conn is not None
        request_index = http.requests - 1
        lines = LineSplitter()
        async for chunk in http.body():
            t_ns, t_perf = conn.last_recv_ns, conn.last_recv_perf_ns
            for line in lines.feed(chunk):
                item = parse_line(line)
                if isinstance(item, TokenRecord):
                    self.deliver(rec, item, t_ns, t_perf, request_index)
                elif isinstance(item, Started):
                    self.stream_known(rec, item.stream)
                elif isinstance(item, Done):
                    return item.reason
        raise TransportError("response ended before the done line")
