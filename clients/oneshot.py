"""One-shot client: one request, the whole answer in one response.

A broken request is re-requested for the same stream from the start (`after=0`) once the
stream id is known (from the response header), else as a new generation: the cost of
having no cursor shows up as duplicated bytes, not duplicated tokens.
"""

from __future__ import annotations

from clients.base import Client, expect, request_for
from clients.http import HTTPLayer
from clients.recorder import StreamRecord
from streams.params import GenParams
from transports.oneshot import decode_batch


class OneShotClient(Client):
    key = "oneshot"

    async def attempt(self, http: HTTPLayer, params: GenParams, rec: StreamRecord) -> str:
        stream_id = self.resume.stream_id
        if stream_id:  # no cursor: the whole answer again
            method, (target, body) = "GET", (f"/oneshot?stream={stream_id}&after=0", b"")
        else:
            method = self.options.method
            target, body = request_for("/oneshot", params, method)
        rec.request_sent()
        resp = await http.request(method, target, [], body)
        self.stream_known(rec, resp.headers.get("x-pushlab-stream", ""))
        await expect(http, resp, 200, "application/json")
        data = await http.read_body()
        conn = http.conn
        assert conn is not None
        batch = decode_batch(data)
        held = self.resume.after
        for tok in batch.tokens:
            if tok.seq > held:  # a re-request repeats the answer: keep what is new
                self.deliver(rec, tok, conn.last_recv_ns, conn.last_recv_perf_ns, http.requests - 1)
        return batch.reason or "done"
