"""Long- and short-polling clients: create the stream, then poll with the cursor.

Polls reuse one keep-alive connection; when it breaks, the next poll reconnects and
continues from the same cursor (the resume point's `after`), so nothing is lost or
duplicated by construction.
"""

from __future__ import annotations

import asyncio
import time

from clients.base import Client, expect, request_for
from clients.http import HTTPLayer
from clients.recorder import StreamRecord
from streams.params import GenParams
from transports.longpoll import decode_batch


class LongPollClient(Client):
    key = "longpoll"
    hold = True

    async def attempt(self, http: HTTPLayer, params: GenParams, rec: StreamRecord) -> str:
        if not self.resume.stream_id:
            target, body = request_for(f"/{self.key}", params, "POST")
            rec.request_sent()
            resp = await http.request("POST", target, [], body)
            await expect(http, resp, 201, "application/json")
            self.stream_known(rec, decode_batch(await http.read_body()).stream)
        while True:
            after = self.resume.after  # every poll asks for what follows the cursor
            query = f"after={after}" + (f"&wait={self.options.wait_s:g}" if self.hold else "")
            sent_perf = time.perf_counter_ns()
            resp = await http.request("GET", f"/{self.key}/{self.resume.stream_id}?{query}")
            await expect(http, resp, 200, "application/json")
            body = await http.read_body()
            conn = http.conn
            assert conn is not None
            batch = decode_batch(body)
            for tok in batch.tokens:
                self.deliver(rec, tok, conn.last_recv_ns, conn.last_recv_perf_ns, http.requests - 1)
            self.resume.update(batch.stream, batch.next)
            if batch.done:
                return batch.reason or "done"
            if not self.hold:
                elapsed_s = (time.perf_counter_ns() - sent_perf) / 1e9
                await asyncio.sleep(max(0.0, self.options.interval_ms / 1e3 - elapsed_s))


class ShortPollClient(LongPollClient):
    key = "shortpoll"
    hold = False
