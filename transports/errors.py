"""Every JSON error body pushlab sends, built here and nowhere else (sans-I/O).

Two shapes are documented (docs/PROTOCOL.md): pushlab's own
`{"error": {"message", "type", "param"}}`, used by every route, the error middleware and the
WebSocket `error` message; and OpenAI's, the same plus `code`, used by /v1 (its requests and
the `error` object a /v1 stream ends with) so that the official SDKs read it.
"""

from __future__ import annotations

from typing import Any

from streams.errors import PushlabError


def error_body(message: str, type_: str, param: str | None = None) -> dict[str, Any]:
    """pushlab's error body."""
    return {"error": {"message": message, "type": type_, "param": param}}


def openai_error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error body: pushlab's plus `code` (always present, usually null)."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def exception_body(exc: PushlabError, *, openai: bool = False) -> dict[str, Any]:
    """The body for a PushlabError, in pushlab's shape or (for /v1) OpenAI's."""
    if openai:
        return openai_error_body(exc.message, exc.type, exc.param)
    return error_body(exc.message, exc.type, exc.param)
