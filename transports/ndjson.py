"""NDJSON over one chunked HTTP response (sans-I/O): what a fetch() reader consumes.

    GET /ndjson?params   or   POST /ndjson {params}     (resume: stream=ID&after=SEQ)
    Content-Type: application/x-ndjson, Transfer-Encoding: chunked
One JSON object per line, LF-terminated:
    {"type":"started","stream":ID,"after":SEQ}
    {token object}                       (transports/token.py; no "type" key)
    {"type":"done","stream":ID,"seq":LAST,"reason":"done"|"cancelled"|"idle"}
"""

from __future__ import annotations

from transports.token import TokenRecord, decode_token, dumps, loads
from transports.websocket import Done, Started


def encode_started(stream: str, after: int) -> bytes:
    return dumps({"type": "started", "stream": stream, "after": after}) + b"\n"


def encode_line(payload: bytes) -> bytes:
    return payload + b"\n"


def encode_done(stream: str, seq: int, reason: str) -> bytes:
    return dumps({"type": "done", "stream": stream, "seq": seq, "reason": reason}) + b"\n"


class LineSplitter:
    """Bytes in, complete LF-terminated lines out; keeps the unterminated rest."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._rest + chunk if self._rest else chunk
        lines = data.split(b"\n")
        self._rest = lines.pop()
        return [line for line in lines if line]

    @property
    def pending(self) -> bytes:
        return self._rest


def parse_line(line: bytes) -> TokenRecord | Started | Done:
    obj = loads(line)
    kind = obj.get("type") if isinstance(obj, dict) else None
    if kind == "started":
        return Started(obj["stream"], int(obj["after"]))
    if kind == "done":
        return Done(obj["stream"], int(obj["seq"]), obj["reason"])
    return decode_token(obj)
