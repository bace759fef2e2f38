"""Long-polling cursor protocol (sans-I/O); short polling and one-shot reuse the batch shape.

    POST /longpoll            body or query: generation params -> 201 + batch (no tokens yet)
    GET  /longpoll/{id}?after=SEQ&wait=S
        returns the tokens with seq > SEQ at once (at most a server-set cap of bytes; the
        rest on the next poll); when there is none yet and the stream is running, holds
        up to S seconds (default 25, at most 60) for at least one.

A batch (one JSON object per response):
    {"stream": ID, "next": SEQ, "done": BOOL, "reason": STR, "tokens": [token objects]}
`next` is the cursor for the following poll (the last seq delivered so far); resuming after
a broken connection is just polling again with the last cursor. `done` true means no token
will follow `next`.
"""

from __future__ import annotations

import dataclasses

from streams.errors import ProtocolError
from transports.token import TokenRecord, decode_token, dumps, loads

DEFAULT_WAIT_S = 25.0
MAX_WAIT_S = 60.0


def encode_batch(
    stream: str, payloads: list[bytes], next_seq: int, done: bool, reason: str
) -> bytes:
    """One poll response; `payloads` are the hub's pre-encoded token objects."""
    head, tail = batch_frame(stream, next_seq, done, reason)
    return head + b",".join(payloads) + tail


def batch_frame(stream: str, next_seq: int, done: bool, reason: str) -> tuple[bytes, bytes]:
    """What goes before and after a batch's comma-separated token objects: `encode_batch`
    for a server that writes a long batch in pieces."""
    head = dumps({"stream": stream, "next": next_seq, "done": done, "reason": reason})
    return head[:-1] + b',"tokens":[', b"]}"


@dataclasses.dataclass(frozen=True, slots=True)
class Batch:
    stream: str
    next: int
    done: bool
    reason: str
    tokens: list[TokenRecord]


def decode_batch(body: bytes) -> Batch:
    """Client side: read one poll (or one-shot) response body."""
    obj = loads(body)
    try:
        return Batch(
            obj["stream"],
            int(obj["next"]),
            bool(obj["done"]),
            str(obj.get("reason", "")),
            [decode_token(t) for t in obj["tokens"]],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError("malformed poll batch") from exc
