"""JSON from a peer (sans-I/O): the one loader for request bodies and WebSocket messages,
and the one check of a body's media type.

`json.loads` alone accepts what a server should not read, or fails in ways a boundary
cannot translate:

- nesting deeper than the interpreter's recursion limit raises `RecursionError` (about
  1,000 levels, measured with `json.loads("[" * 100_000)` on CPython 3.11): not a
  `ValueError`, so it escaped every handler as a 500;
- a duplicate key keeps the last value silently (RFC 8259 section 4: names "SHOULD be
  unique"; receivers differ on which one wins, so the server refuses to guess);
- `NaN`, `Infinity` and `-Infinity` are not JSON (RFC 8259 section 6) but are accepted.

`load_json` refuses all three with `ParamError`, and so raises nothing else. The nesting
limit, MAX_DEPTH, is well above what a request needs (measured with `depth` on OpenAI SDK
request shapes): /v1 messages with content parts or tool calls are 6 levels deep; a tool
whose JSON schema holds an array of objects holding an array (`tools`, accepted and
ignored) is 11, and each further object-in-array level of a schema adds 4. A generation
request or a WebSocket message is 1. What arrives here is at most 64 KiB (the body limit
in server.py, the message limit in transports/web/websocket.py). Cost, 64 KiB, mean of 20 runs on a
busy 2-core machine: many small objects 21.5 ms (`json.loads` 12.5), 32,000 integers 8.2
ms (1.9: the depth walk), strings 1.1 ms (0.6).
"""

from __future__ import annotations

import json
from typing import Any

from streams.errors import ParamError, UnsupportedMediaType

MAX_DEPTH = 32


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise ParamError(f"duplicate key '{name[:64]}' in JSON", param=name[:64])
            seen.add(name)
    return obj


def _no_constant(name: str) -> float:
    raise ParamError(f"{name} is not a JSON number", param=None)


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constant)


def depth(value: object) -> int:
    """How many arrays and objects deep `value` nests (0 for a scalar); level by level, so
    any depth is measured without recursion."""
    level: list[Any] = [value]
    deepest = 0
    while True:
        level = [node for node in level if isinstance(node, (dict, list))]
        if not level:
            return deepest
        deepest += 1
        below: list[Any] = []
        for node in level:
            below.extend(node.values() if isinstance(node, dict) else node)
        level = below


def load_json(data: bytes | str, *, what: str = "request body") -> Any:
    """Parse `data` (UTF-8 when bytes, RFC 8259 section 8.1), or raise ParamError saying
    why: not UTF-8, not JSON, a duplicate key, NaN or Infinity, or nested deeper than
    MAX_DEPTH."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        value = _DECODER.decode(text)
    except UnicodeDecodeError:
        raise ParamError(f"{what} is not UTF-8", param=None) from None
    except RecursionError:
        raise ParamError(f"{what} nests deeper than {MAX_DEPTH} levels", param=None) from None
    except ValueError:  # json.JSONDecodeError
        raise ParamError(f"{what} is not valid JSON", param=None) from None
    if depth(value) > MAX_DEPTH:
        raise ParamError(f"{what} nests deeper than {MAX_DEPTH} levels", param=None)
    return value


def check_media_type(mimetype: str, charset: str | None) -> None:
    """Accept `application/json` and `application/*+json` (RFC 6839 section 3.1), with no
    charset or UTF-8; anything else raises UnsupportedMediaType. `mimetype` is the header's
    type/subtype, lowercased (aiohttp's `request.content_type`)."""
    json_type = mimetype == "application/json" or (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    )
    if not json_type:
        raise UnsupportedMediaType(
            f"a request body must be application/json, got {mimetype[:64]!r}", param=None
        )
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        raise UnsupportedMediaType(
            f"a JSON body must be UTF-8, got charset {charset[:32]!r}", param=None
        )
