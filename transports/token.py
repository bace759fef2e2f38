"""The token object every transport carries, and its two envelopes (sans-I/O).

envelope "text":   {"stream": ID, "seq": N, "t_emit_ns": T, "text": "..."}
envelope "openai": an OpenAI `chat.completion.chunk` whose `choices[0].delta.content` is the
                   token text, plus {"pushlab": {"stream": ID, "seq": N, "t_emit_ns": T}}

Both are compact JSON (no spaces, UTF-8, no CR/LF), encoded once per token on the server and
framed by each transport without re-encoding. `decode_token` reads either envelope back.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from streams.errors import ProtocolError
from streams.params import GenParams

MODEL_NAME = "pushlab-synthetic"

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_encode_string = json.encoder.encode_basestring


def dumps(obj: object) -> bytes:
    """Compact UTF-8 JSON, the one encoding every pushlab wire object uses."""
    return _dumps(obj).encode()


@dataclasses.dataclass(frozen=True, slots=True)
class TokenRecord:
    """A token as a client sees it."""

    stream: str
    seq: int
    t_emit_ns: int
    text: str


def encode_token(stream_id: str, seq: int, t_emit_ns: int, text: str, params: GenParams) -> bytes:
    """The token's wire object in the stream's envelope (the hub's `Encoder`)."""
    if params.envelope == "openai":
        delta: dict[str, str] = (
            {"role": "assistant", "content": text} if seq == 1 else {"content": text}
        )
        return dumps(
            {
                "id": f"chatcmpl-{stream_id}",
                "object": "chat.completion.chunk",
                "created": t_emit_ns // 1_000_000_000,
                "model": MODEL_NAME,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}],
                "pushlab": {"stream": stream_id, "seq": seq, "t_emit_ns": t_emit_ns},
            }
        )
    # the hot path: byte-for-byte what dumps() gives for this dict (a test checks), with the
    # C string encoder json.dumps itself uses for ensure_ascii=False
    return b'{"stream":"%s","seq":%d,"t_emit_ns":%d,"text":%s}' % (
        stream_id.encode(),
        seq,
        t_emit_ns,
        _encode_string(text).encode(),
    )


def decode_token(obj: dict[str, Any]) -> TokenRecord:
    """Read a token object in either envelope; raises ProtocolError when it is neither."""
    try:
        if "pushlab" in obj:
            meta = obj["pushlab"]
            text = obj["choices"][0]["delta"].get("content") or ""
            return TokenRecord(meta["stream"], int(meta["seq"]), int(meta["t_emit_ns"]), text)
        return TokenRecord(obj["stream"], int(obj["seq"]), int(obj["t_emit_ns"]), obj["text"])
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise ProtocolError(f"not a pushlab token object: {str(obj)[:120]}") from exc


def loads(data: bytes | str) -> Any:
    """Parse JSON from the peer, translating failures to ProtocolError."""
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ProtocolError(f"invalid JSON from peer: {data[:80]!r}") from exc
