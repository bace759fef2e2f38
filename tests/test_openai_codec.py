"""The one OpenAI chunk codec (transports/openai.py): exact bytes, and encode -> decode round
trips whole and split at every byte, for /v1's chunks and the token envelope alike."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.errors import ParamError, ProtocolError
from streams.params import GenParams
from transports import openai as codec
from transports.token import TokenRecord, decode_token, encode_token


def _request(include_usage: bool) -> codec.ChatRequest:
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    body = {"model": "m", "messages": [{"role": "user", "content": "a b c"}], "stream": True}
    return codec.parse_request({**body, **options})


def _answer(include_usage: bool, texts: list[str], reason: str = "length") -> bytes:
    """A whole streamed /v1 answer as the server writes it: hub payloads framed, then the end."""
    request = _request(include_usage)
    encoder = codec.ChunkEncoder(request, 7)
    events = [
        codec.event(encoder("s1", i, 4 + i, text, request.params))
        for i, text in enumerate(texts, 1)
    ]
    return b"".join(events) + encoder.finish("s1", reason, len(texts))


HEAD = b'data: {"id":"chatcmpl-s1","object":"chat.completion.chunk","created":7,"model":"m",'
# The bytes /v1 sent before the codec was unified (captured from the old ChunkEncoder).
VECTOR = (
    HEAD + b'"system_fingerprint":null,"choices":[{"index":0,"delta":{"role":"assistant",'
    b'"content":"Hi"},"logprobs":null,"finish_reason":null}],'
    b'"pushlab":{"stream":"s1","seq":1,"t_emit_ns":5},"usage":null}\n\n'
    + HEAD + b'"system_fingerprint":null,"choices":[{"index":0,'
    b'"delta":{"content":" \\"\xc3\xa9\\"\\n"},"logprobs":null,"finish_reason":null}],'
    b'"pushlab":{"stream":"s1","seq":2,"t_emit_ns":6},"usage":null}\n\n'
    + HEAD + b'"system_fingerprint":null,"choices":[{"index":0,"delta":{},"logprobs":null,'
    b'"finish_reason":"length"}],"usage":null}\n\n'
    + HEAD + b'"system_fingerprint":null,"choices":[],'
    b'"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n'
    b"data: [DONE]\n\n"
)  # fmt: skip


def test_v1_answer_bytes_are_the_vector() -> None:
    assert _answer(True, ["Hi", ' "é"\n']) == VECTOR
    usage_event = VECTOR[VECTOR.rindex(HEAD) : VECTOR.index(b"data: [DONE]")]
    expected = VECTOR.replace(usage_event, b"").replace(b',"usage":null', b"")
    assert _answer(False, ["Hi", ' "é"\n']) == expected


def test_envelope_bytes_are_the_vector() -> None:
    payload = encode_token("ab", 2, 5_000_000_000, " é", GenParams(envelope="openai"))
    assert payload == (
        b'{"id":"chatcmpl-ab","object":"chat.completion.chunk","created":5,'
        b'"model":"pushlab-synthetic","choices":[{"index":0,"delta":{"content":" \xc3\xa9"},'
        b'"logprobs":null,"finish_reason":null}],'
        b'"pushlab":{"stream":"ab","seq":2,"t_emit_ns":5000000000}}'
    )


def _decode(data: bytes, cuts: list[int]) -> tuple[list[codec.Chunk], bool]:
    decoder, chunks = codec.ChunkDecoder(), list[codec.Chunk]()
    for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
        chunks += decoder.feed(data[a:b])
    return chunks, decoder.done


@pytest.mark.parametrize("include_usage", [False, True])
def test_round_trip_whole_and_split_at_every_byte(include_usage: bool) -> None:
    texts = ["Hi", ' "é"\n', "", "中文 ", "\r\nend"]
    data = _answer(include_usage, texts, reason="stop")
    whole, done = _decode(data, [])
    assert done
    tokens = [c.token for c in whole if c.token is not None]
    assert tokens == [TokenRecord("s1", i, 4 + i, t) for i, t in enumerate(texts, 1)]
    assert [c.finish_reason for c in whole if c.finish_reason] == ["stop"]
    usage = [c.usage for c in whole if c.usage]
    assert usage == ([{"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}]
                     if include_usage else [])  # fmt: skip
    for cut in range(1, len(data)):
        assert _decode(data, [cut]) == (whole, True), cut


@given(
    texts=st.lists(st.text(max_size=8), min_size=1, max_size=6),
    cuts=st.lists(st.integers(1, 4000), max_size=12),
)
def test_round_trip_under_any_chunking(texts: list[str], cuts: list[int]) -> None:
    data = _answer(True, texts, reason="stop")
    chunks, done = _decode(data, sorted({c for c in cuts if c < len(data)}))
    assert done
    assert [c.token.text for c in chunks if c.token is not None] == texts
    assert [t for c in chunks for t in c.contents] == texts  # the finish chunk adds none


def test_nothing_after_done_is_read() -> None:
    chunks, done = _decode(_answer(False, ["a"]) + b'data: {"error":{"message":"late"}}\n\n', [])
    assert done and all(c.error is None for c in chunks)


def test_a_streamed_error_decodes_to_its_message() -> None:
    encoder = codec.ChunkEncoder(_request(False), 7)
    data = encoder.error("upstream: gone")
    assert data == (
        b'data: {"error":{"message":"upstream: gone","type":"server_error","param":null,'
        b'"code":null}}\n\n'
    )
    [chunk], done = _decode(data, [])
    assert chunk.error == "upstream: gone" and not done


@given(text=st.text(max_size=20), seq=st.integers(1, 10**6), t=st.integers(0, 2**62))
def test_envelope_round_trips_through_the_codec_and_decode_token(
    text: str, seq: int, t: int
) -> None:
    payload = encode_token("s9", seq, t, text, GenParams(envelope="openai"))
    chunk = codec.decode_chunk(json.loads(payload))
    assert chunk.token == decode_token(json.loads(payload)) == TokenRecord("s9", seq, t, text)
    assert chunk.contents == (text,) and chunk.finish_reason is None


def test_other_servers_chunks_decode_without_pushlab_fields() -> None:
    chunk = codec.decode_chunk(
        {"choices": [{"delta": {"content": "x"}}, {"delta": {}, "finish_reason": "stop"}]}
    )
    assert (chunk.contents, chunk.finish_reason, chunk.token) == (("x",), "stop", None)


@pytest.mark.parametrize(
    "obj",
    [[1], {"choices": "no"}, {"choices": [{"delta": {"content": "x"}}], "pushlab": {"seq": 1}}],
)
def test_malformed_chunks_are_protocol_errors(obj: object) -> None:
    with pytest.raises(ProtocolError):
        codec.decode_chunk(obj)


_GOOD = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"model": 5}, "model"),
        ({"model": "m" * (codec.MAX_MODEL_CHARS + 1)}, "model"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": 1, "content": "hi"}]}, "messages[0]"),
        ({"messages": [{"content": "hi"}]}, "messages[0]"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": {"text": "hi"}}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
         "messages[0].content[0]"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0]"),
        ({"messages": [{"role": "user", "content": ["hi"]}]}, "messages[0].content[0]"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "text": "x"}]}]},
         "messages[0].content[0]"),
        ({"stream": "yes"}, "stream"),
        ({"stream": True, "stream_options": []}, "stream_options"),
        ({"stream": True, "stream_options": {"include_usage": 1}}, "include_usage"),
        ({"max_tokens": "5"}, "max_tokens"),
        ({"seed": "5_0"}, "seed"),
        ({"seed": True}, "seed"),
        ({"tokens": "\u0665"}, "tokens"),
        ({"x" * 10_000: 1}, "x" * 64),
    ],
)  # fmt: skip
def test_every_request_field_is_type_checked(change: dict[str, object], param: str) -> None:
    with pytest.raises(ParamError) as caught:
        codec.parse_request({**_GOOD, **change})
    assert caught.value.param == param
    assert len(caught.value.message) < 200


def test_content_parts_and_a_null_content_are_read() -> None:
    messages = [{"role": "system", "content": "a b"},
                {"role": "user", "content": [{"type": "text", "text": "c d e"}]},
                {"role": "assistant", "content": None, "tool_calls": []}]  # fmt: skip
    request = codec.parse_request({**_GOOD, "model": "m" * codec.MAX_MODEL_CHARS,
                                   "messages": messages})  # fmt: skip
    assert request.prompt_tokens == 5
