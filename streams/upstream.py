"""A real model as the token source: the settings and the request of the relay (stdlib only).

With `--upstream URL` each stream posts one streaming chat completion to an OpenAI-compatible
endpoint (llama.cpp server, vLLM, Ollama, a hosted API, or another pushlab's /v1) and relays
each `delta.content` as it arrives. What is pure lives here: the settings, their validation
(one ParamError each), and the request. The HTTP I/O is `transports/web/upstream.py`; the
chunks are read by the one chunk codec, `transports/openai.py`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from streams.errors import ParamError
from streams.params import GenParams

DEFAULT_PROMPT = "Explain, in a few paragraphs, how a chat answer is streamed to a browser."


@dataclasses.dataclass(frozen=True)
class UpstreamConfig:
    base_url: str  # up to and including /v1, e.g. http://127.0.0.1:9000/v1
    model: str = "pushlab-synthetic"
    api_key_env: str = ""  # name of the environment variable holding the key
    prompt: str = DEFAULT_PROMPT  # used when the request carried no messages
    extra: str = ""  # JSON object of extra body fields (e.g. a pushlab upstream's rate)

    def extra_fields(self) -> dict[str, Any]:
        """`extra` parsed; ParamError unless it is a JSON object."""
        if not self.extra:
            return {}
        try:
            value = json.loads(self.extra)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise ParamError("--upstream-extra must be a JSON object", param="upstream_extra")
        return value

    def headers(self) -> dict[str, str]:
        """The request headers: a bearer key when `api_key_env` names one; ParamError when
        that variable is empty."""
        if not self.api_key_env:
            return {}
        key = os.environ.get(self.api_key_env, "")
        if not key:
            raise ParamError(
                f"environment variable {self.api_key_env} is empty", param="upstream_key_env"
            )
        return {"Authorization": f"Bearer {key}"}

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def body(
        self, extra: dict[str, Any], params: GenParams, messages: list[dict[str, object]] | None
    ) -> dict[str, Any]:
        """The streaming chat request for one stream (`extra` is `extra_fields()`)."""
        return {
            "model": self.model,
            "messages": messages or [{"role": "user", "content": self.prompt}],
            "stream": True,
            "max_tokens": params.tokens,
            "seed": params.seed,
            **extra,
        }
