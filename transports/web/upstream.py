"""The relay's I/O: one aiohttp session to the upstream model, read as it streams.

`Upstream(config)` is the hub's `Source` (streams/hub.py): called with a stream's generation
parameters (and the chat messages when the request had some), it posts one streaming chat
completion (streams/upstream.py builds it) and yields each non-empty `delta.content` as the
chunk codec (transports/openai.py) reads it. Failures become TransportError, which the hub
turns into the stream's end reason.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp

from streams.errors import ProtocolError, TransportError
from streams.params import GenParams
from streams.upstream import UpstreamConfig
from transports.openai import ChunkDecoder


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
        try:
            async with self._session.post(self.config.url, json=body, headers=self.headers) as resp:
                if resp.status != 200:
                    text = (await resp.text())[:200]
                    raise TransportError(f"upstream HTTP {resp.status}: {text}", retryable=False)
                decoder = ChunkDecoder()
                async for data in resp.content.iter_any():
                    for chunk in decoder.feed(data):
                        if chunk.error is not None:
                            message = f"upstream error: {chunk.error}"[:200]
                            raise TransportError(message, retryable=False)
                        for text in chunk.contents:
                            if text:  # an empty delta (role only, finish) is no token
                                yield text
                    if decoder.done:
                        return
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransportError(f"upstream unreachable or broken: {exc!r}"[:200]) from exc
        except ProtocolError as exc:
            raise TransportError(f"upstream sent {exc.message}"[:200], retryable=False) from exc
        raise TransportError("upstream stream ended before [DONE]")
