"""The relay's I/O: one aiohttp session to the upstream model, read as it streams.

`Upstream(config)` is the hub's `Source` (streams/hub.py): called with a stream's generation
parameters (and the chat messages when the request had some), it posts one streaming chat
completion (streams/upstream.py builds it) and yields each non-empty `delta.content` as the
chunk codec (transports/openai.py) reads it.

Every failure becomes a TransportError with a short, fixed message (`HTTP 401`,
`unreachable`, `connection lost`, `timed out`, `error event`, `malformed event`, ...),
which the hub makes the stream's end reason: every reader of the stream receives that
reason, so it never carries what the upstream sent (a hosted API's 401 body may name the
account, a malformed event may hold anything). The details go to the log instead, cut to
`_LOGGED_CHARS` and quoted with repr (no line breaks from the peer in the log).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp

from streams.errors import ProtocolError, TransportError
from streams.params import GenParams
from streams.upstream import UpstreamConfig
from transports.openai import Chunk, ChunkDecoder

log = logging.getLogger("pushlab.upstream")

# What one read takes from the socket, and so the most the SSE parser takes in at once.
READ_BYTES = 64 * 1024
# Bytes the upstream may send without completing one event. The SSE parser (transports/sse.py)
# holds an unterminated line, and the data lines of an event not yet ended by a blank line,
# whole, so this bounds what a relay buffers (to this plus one read: 1.06 MiB). A chat
# completion chunk is a few hundred bytes (pushlab's own /v1 token chunk: 319 bytes,
# encode_chunk measured 2026-11-30), so this is thousands of chunks' worth. Comments complete
# no event and count too: a heartbeat of a few bytes every 15 s would take days to reach it.
EVENT_BYTES = 1 << 20
_LOGGED_CHARS = 300


class Upstream:
    """One HTTP session to the upstream, shared by every relayed stream; the settings are
    checked on construction (ParamError)."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self.extra = config.extra_fields()
        self.headers = config.headers()
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)
        self._session = aiohttp.ClientSession(timeout=timeout)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    def __call__(
        self, params: GenParams, messages: list[dict[str, object]] | None
    ) -> AsyncIterator[str]:
        return self._texts(params, messages)

    async def _texts(
        self, params: GenParams, messages: list[dict[str, object]] | None
    ) -> AsyncIterator[str]:
        assert self._session is not None, "Upstream.start() first"
        body = self.config.body(self.extra, params, messages)
        url, answered = self.config.url, False
        try:
            async with self._session.post(url, json=body, headers=self.headers) as resp:
                answered = True
                if resp.status != 200:
                    await _log_refusal(url, resp)
                    raise TransportError(f"HTTP {resp.status}", retryable=False)
                async for chunk in _chunks(resp.content):
                    if chunk.error is not None:
                        log.warning("upstream %s streamed an error: %r", url,
                                    chunk.error[:_LOGGED_CHARS])  # fmt: skip
                        raise TransportError("error event", retryable=False)
                    for text in chunk.contents:
                        if text:  # an empty delta (role only, finish) is no token
                            yield text
        # RecursionError: JSON nested deeper than the interpreter's limit (json.loads raises
        # it, not ValueError, for `[[[[...` 100,000 deep: probed)
        except (ProtocolError, RecursionError) as exc:
            log.warning("upstream %s sent a malformed event: %s", url, _described(exc))
            raise TransportError("malformed event", retryable=False) from exc
        except TimeoutError as exc:  # before aiohttp.ClientError: its timeouts are both
            log.warning("upstream %s timed out: %s", url, _described(exc))
            raise TransportError("timed out") from exc
        except (aiohttp.ClientError, OSError) as exc:
            log.warning("upstream %s failed: %s", url, _described(exc))
            raise TransportError("connection lost" if answered else "unreachable") from exc


def _described(exc: BaseException) -> str:
    """The exception for the log: its type and str, bounded. Never its repr: aiohttp's
    ClientResponseError repr holds the request's headers, and so the upstream key."""
    return repr(f"{type(exc).__name__}: {exc}"[:_LOGGED_CHARS])


async def _log_refusal(url: str, resp: aiohttp.ClientResponse) -> None:
    """Log an error status with the start of its body (one read, however long the body)."""
    try:
        head = repr(await resp.content.read(_LOGGED_CHARS))
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        head = _described(exc)
    log.warning("upstream %s answered HTTP %d: %s", url, resp.status, head)


async def _chunks(content: aiohttp.StreamReader) -> AsyncIterator[Chunk]:
    """The chunks of an upstream's event stream, up to `data: [DONE]`. TransportError when
    it ends before [DONE] or sends `EVENT_BYTES` without completing an event; the codec's
    ProtocolError (or RecursionError) for a chunk that is not one."""
    decoder = ChunkDecoder()
    pending = 0  # bytes read since the last read that completed an event
    async for data in content.iter_chunked(READ_BYTES):
        completed = False
        for chunk in decoder.feed(data):
            completed = True
            yield chunk
        if decoder.done:
            return
        pending = 0 if completed else pending + len(data)
        if pending > EVENT_BYTES:
            log.warning("upstream sent %d bytes without completing an event", pending)
            raise TransportError("malformed event (over 1 MiB)", retryable=False)
    log.warning("upstream ended its stream before [DONE]")
    raise TransportError("ended before [DONE]")
