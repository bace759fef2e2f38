"""The official `openai` SDK against pushlab's /v1, unchanged: exact content, usage, finish."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest

from harness.children import ServerProcess
from streams.generator import texts
from streams.params import GenParams
from tests.support import UNIT
from transports.web.config import ServerConfig

PROMPT = "Why do chat answers stream token by token?"
MESSAGES = [{"role": "user", "content": PROMPT}]
GEN = {"tokens": 12, "rate": 400, "ttft_ms": 0, "seed": 3}


def expected(tokens: int = 12, seed: int = 3, text: str = "en") -> str:
    return "".join(texts(GenParams(tokens=tokens, rate=400, ttft_ms=0, seed=seed, text=text)))


@pytest.fixture(scope="module")
def server() -> ServerProcess:
    # comment heartbeats must not trip the SDK
    proc = ServerProcess(config=ServerConfig(heartbeat_s=0.05))
    proc.start()
    yield proc  # type: ignore[misc]
    proc.stop()


@pytest.fixture
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{server.target.url}/v1", api_key="unused", timeout=10 * UNIT, max_retries=0
    )


def test_sync_stream_with_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="my-model",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={**GEN, "ttft_ms": 200},  # idle long enough for several heartbeat comments
        )
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == expected()
    assert all(c.model == "my-model" and c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    *body, last = chunks
    assert last.choices == [] and last.usage is not None
    assert (last.usage.completion_tokens, last.usage.prompt_tokens) == (12, len(PROMPT.split()))
    assert last.usage.total_tokens == 12 + len(PROMPT.split())
    assert all(c.usage is None for c in body)
    assert body[0].choices[0].delta.role == "assistant"
    assert body[-1].choices[0].finish_reason == "stop"
    assert [c.choices[0].finish_reason for c in body[:-1]] == [None] * (len(body) - 1)


def test_sync_whole_answer_cut_by_max_tokens(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(
        model="pushlab-synthetic", messages=MESSAGES, max_tokens=5, extra_body=GEN
    )
    assert done.object == "chat.completion" and done.model == "pushlab-synthetic"
    assert done.choices[0].message.content == expected(tokens=5)
    assert done.choices[0].message.role == "assistant"
    assert done.choices[0].finish_reason == "length"
    assert done.usage is not None and done.usage.completion_tokens == 5


def test_stream_without_usage_has_no_usage_field(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="m",
            messages=MESSAGES,
            stream=True,
            max_tokens=4,
            extra_body={**GEN, "text": "zh"},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected(4, text="zh")
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks)


async def test_async_client_streams_the_same_answer(server: ServerProcess) -> None:
    client = openai.AsyncOpenAI(base_url=f"{server.target.url}/v1", api_key="unused", max_retries=0)
    async with asyncio.timeout(10 * UNIT):
        stream = await client.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, extra_body=GEN
        )
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        done = await client.chat.completions.create(model="m", messages=MESSAGES, extra_body=GEN)
    await client.close()
    assert "".join(parts) == expected() == done.choices[0].message.content
    assert done.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"n": 2}, "n"),
        ({"extra_body": {"tokens": -1}}, "tokens"),
        ({"extra_body": {"colour": "red"}}, "colour"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
def test_errors_come_back_as_openai_errors(client: openai.OpenAI, kwargs: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", messages=MESSAGES, **kwargs)
    assert info.value.status_code == 400
    body = info.value.body
    assert (
        isinstance(body, dict)
        and body["param"] == param
        and body["type"] == "invalid_request_error"
    )
    assert set(body) == {"message", "type", "param", "code"}


def test_missing_messages_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="m", messages=[])


def test_models_list(client: openai.OpenAI) -> None:
    assert "pushlab-synthetic" in [m.id for m in client.models.list()]


def test_stream_bytes_never_carry_an_event_id(server: ServerProcess) -> None:
    import urllib.request

    req = urllib.request.Request(
        f"{server.target.url}/v1/chat/completions",
        data=json.dumps({"model": "m", "messages": MESSAGES, "stream": True, **GEN}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10 * UNIT) as resp:
        body = resp.read().decode()
    assert body.endswith("data: [DONE]\n\n")
    assert not any(line.startswith(("id:", "retry:", "event:")) for line in body.splitlines())
