"""Client for the OpenAI-compatible stream (`POST /v1/chat/completions`, `stream: true`).

Reads the `data:` chunks with the same WHATWG SSE parser as the SSE client and takes each
token's seq and emit time from the chunk's `pushlab` field. The stream has no event ids, so
a broken connection can only be retried from the start: a new generation, whose repeated
seqs the record counts as duplicates (the honest cost of a stream without a cursor).
"""

from __future__ import annotations

from clients.base import Client, expect
from clients.http import HTTPLayer
from clients.recorder import StreamRecord
from streams.errors import TransportError
from streams.params import GenParams
from transports.openai import MODELS, ChunkDecoder
from transports.token import dumps

PROMPT = "Explain how a chat answer can be streamed to a browser."


def request_body(params: GenParams, model: str = MODELS[0]) -> bytes:
    """The chat request: OpenAI fields plus pushlab's generation parameters as extra fields."""
    generation = {k: v for k, v in params.as_dict().items() if k != "envelope"}
    return dumps({"model": model, "messages": [{"role": "user", "content": PROMPT}],
                  "stream": True, **generation})  # fmt: skip


class OpenAIClient(Client):
    key = "openai"

    async def attempt(self, http: HTTPLayer, params: GenParams, rec: StreamRecord) -> str:
        rec.request_sent()
        headers = [("Accept", "text/event-stream")]
        if not http.target.token:  # the SDK's habit; a real credential comes from the target
            headers.append(("Authorization", "Bearer unused"))
        resp = await http.request("POST", "/v1/chat/completions", headers, request_body(params))
        await expect(http, resp, 200, "text/event-stream")
        conn = http.conn
        assert conn is not None
        request_index = http.requests - 1
        decoder, reason = ChunkDecoder(), ""
        async for data in http.body():
            t_ns, t_perf = conn.last_recv_ns, conn.last_recv_perf_ns
            for chunk in decoder.feed(data):  # the one chunk codec: transports/openai.py
                if chunk.error is not None:
                    raise TransportError(f"server error: {chunk.error}", retryable=False)
                if chunk.finish_reason:
                    reason = "done" if chunk.finish_reason == "stop" else chunk.finish_reason
                if chunk.token is not None and chunk.contents:
                    self.deliver(rec, chunk.token, t_ns, t_perf, request_index)
            if decoder.done:
                return reason or "done"
        raise TransportError("stream ended before [DONE]")
