"""A real model as the token source: an OpenAI-compatible streaming endpoint (llama.cpp
server, vLLM, Ollama, a hosted API, or another pushlab's /v1), read as it streams.

`Upstream(config)` is the hub's `Source`: called with a stream's generation parameters (and
the chat messages when the request had some), it posts one streaming chat completion and
yields each `delta.content` as it arrives. Failures become TransportError, which the hub
turns into the stream's end reason. This module does I/O (aiohttp); the hub does not.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from streams.errors import ParamError, TransportError
from streams.params import GenParams
from transports.sse import SSEParser

DEFAULT_PROMPT = "Explain, in a few paragraphs, how a chat answer is streamed to a browser."


@dataclasses.dataclass(frozen=True)
class UpstreamConfig:
    base_url: str  # up to and including /v1, e.g. http://127.0.0.1:9000/v1
    model: str = "pushlab-synthetic"
    api_key_env: str = ""  # name of the environment variable holding the key
    prompt: str = DEFAULT_PROMPT  # used when the request carried no messages
    extra: str = ""  # JSON object of extra body fields (e.g. a pushlab upstream's rate)

    def extra_fields(self) -> dict[str, Any]:
        if not self.extra:
            return {}
        try:
            value = json.loads(self.extra)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise ParamError("--upstream-extra must be a JSON object", param="upstream_extra")
        return value


class Upstream:
    """One HTTP session to the upstream, shared by every relayed stream."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self.extra = config.extra_fields()
        key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
        if config.api_key_env and not key:
            raise ParamError(
                f"environment variable {config.api_key_env} is empty", param="upstream_key_env"
            )
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
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
        body = {
            "model": self.config.model,
            "messages": messages or [{"role": "user", "content": self.config.prompt}],
            "stream": True,
            "max_tokens": params.tokens,
            "seed": params.seed,
            **self.extra,
        }
        url = self.config.base_url.rstrip("/") + "/chat/completions"
        try:
            async with self._session.post(url, json=body, headers=self.headers) as resp:
                if resp.status != 200:
                    text = (await resp.text())[:200]
                    raise TransportError(f"upstream HTTP {resp.status}: {text}", retryable=False)
                parser = SSEParser()
                async for chunk in resp.content.iter_any():
                    for event in parser.feed(chunk):
                        if event.data == "[DONE]":
                            return
                        for text in _contents(event.data):
                            yield text
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransportError(f"upstream unreachable or broken: {exc!r}"[:200]) from exc
        raise TransportError("upstream stream ended before [DONE]")


def _contents(data: str) -> list[str]:
    try:
        obj = json.loads(data)
    except ValueError as exc:
        raise TransportError(f"upstream sent invalid JSON: {data[:80]!r}", retryable=False) from exc
    if "error" in obj:
        raise TransportError(f"upstream error: {obj['error']}"[:200], retryable=False)
    out = []
    for choice in obj.get("choices") or []:
        content = (choice.get("delta") or {}).get("content")
        if content:
            out.append(content)
    return out
