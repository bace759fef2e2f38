"""Client for the OpenAI-compatible stream (`POST /v1/chat/completions`, `stream: true`).

Reads the `data:` chunks with the same WHATWG SSE parser as the SSE client and takes each
token's seq and emit time from the chunk's `pushlab` field. The stream has no event ids, so
a broken connection can only be retried from the start: a new generation, whose repeated
seqs the record counts as duplicates (the honest cost of a stream without a cursor).
"""

from __future__ import annotations

from clients.base import Client, expect
from clients.http import HTTPClient
from clients.recorder import StreamRecord
from streams.errors import ProtocolError, TransportError
from streams.params import GenParams
from transports.openai import MODELS
from transports.sse import SSEParser
from transports.token import TokenRecord, dumps, loads

PROMPT = "Explain how a chat answer can be streamed to a browser."


def request_body(params: GenParams, model: str = MODELS[0]) -> bytes:
    """The chat request: OpenAI fields plus pushlab's generation parameters as extra fields."""
    generation = {k: v for k, v in params.as_dict().items() if k != "envelope"}
    return dumps({"model": model, "messages": [{"role": "user", "content": PROMPT}],
                  "stream": True, **generation})  # fmt: skip


class OpenAIClient(Client):
    key = "openai"

    async def attempt(self, http: HTTPClient, params: GenParams, rec: StreamRecord) -> str:
        rec.request_sent()
        headers = [("Accept", "text/event-stream"), ("Authorization", "Bearer unused")]
        resp = await http.request("POST", "/v1/chat/completions", headers, request_body(params))
        await expect(http, resp, 200, "text/event-stream")
        conn = http.conn
        assert conn is not None
        request_index = http.requests - 1
        parser, reason = SSEParser(), ""
        async for chunk in http.body():
            t_ns, t_perf = conn.last_recv_ns, conn.last_recv_perf_ns
            for event in parser.feed(chunk):
                if event.data == "[DONE]":
                    return reason or "done"
                obj = loads(event.data)
                if "error" in obj:
                    raise TransportError(
                        f"server error: {obj['error'].get('message')}", retryable=False
                    )
                choices = obj.get("choices") or []  # [] is the usage chunk
                for choice in choices:
                    if choice.get("finish_reason"):
                        reason = (
                            "done" if choice["finish_reason"] == "stop" else choice["finish_reason"]
                        )
                    content = (choice.get("delta") or {}).get("content")
                    if content is not None and "pushlab" in obj:
                        meta = obj["pushlab"]
                        try:
                            tok = TokenRecord(
                                meta["stream"], int(meta["seq"]), int(meta["t_emit_ns"]), content
                            )
                        except (KeyError, TypeError, ValueError) as exc:
                            raise ProtocolError("malformed pushlab field in a chunk") from exc
                        self.deliver(rec, tok, t_ns, t_perf, request_index)
        raise TransportError("stream ended before [DONE]")
