"""The token object every transport carries, and its two envelopes (sans-I/O).

envelope "text":   {"stream": ID, "seq": N, "t_emit_ns": T, "text": "..."}
envelope "openai": an OpenAI `chat.completion.chunk` whose `choices[0].delta.content` is the
                   token text, plus {"pushlab": {"stream": ID, "seq": N, "t_emit_ns": T}}

Both are compact JSON (no spaces, UTF-8, no CR/LF), encoded once per token on the server and
framed by each transport without re-encoding. `decode_token` reads either envelope back.
The openai envelope's bytes are made and read by the one chunk codec, transports/openai.py.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from streams.errors import ProtocolError
from streams.params import GenParams

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
        # imported here: transports.openai builds on this module (dumps, TokenRecord)
        from transports.openai import envelope_chunk

        return envelope_chunk(stream_id, seq, t_emit_ns, text)
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
    if "pushlab" in obj:
        from transports.openai import decode_chunk  # here: see encode_token

        token = decode_chunk(obj).token
        if token is None:
            raise ProtocolError(f"not a pushlab token object: {str(obj)[:120]}")
        return token
    try:
        return TokenRecord(obj["stream"], int(obj["seq"]), int(obj["t_emit_ns"]), obj["text"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"not a pushlab token object: {str(obj)[:120]}") from exc


def loads(data: bytes | str) -> Any:
    """Parse JSON from the peer, translating failures to ProtocolError."""
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ProtocolError(f"invalid JSON from peer: {data[:80]!r}") from exc
