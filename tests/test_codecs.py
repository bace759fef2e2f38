"""The non-SSE codecs: exact bytes, round trips, chunking, and that every codec is pure."""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.errors import ParamError, ProtocolError, UnsupportedMediaType
from streams.params import GenParams, parse_number, parse_params
from transports import jsonin, longpoll, ndjson, websocket
from transports.registry import TRANSPORTS
from transports.token import TokenRecord, decode_token, encode_token

ROOT = Path(__file__).resolve().parents[1]
CODECS = sorted(
    {t.codec for t in TRANSPORTS.values()}
    | {"transports.token", "transports.registry", "transports.errors", "transports.jsonin"}
    | {"transports.web.config"}  # not a codec, but the harness imports it: no aiohttp either
    | {"streams.resp"}  # the Redis codec (STREAMS below checks it is stdlib-only as well)
    | {"streams.budget", "streams.credentials"}  # the ledger and credentials: no I/O either
)
STREAMS = sorted(f"streams.{p.stem}" for p in (ROOT / "streams").glob("*.py"))


@pytest.mark.parametrize("module", CODECS)
def test_codecs_import_neither_asyncio_nor_aiohttp(module: str) -> None:
    code = (
        f"import sys, {module}; "
        "bad = sorted(m for m in ('asyncio', 'aiohttp') if m in sys.modules); print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "", f"{module} pulls in {out.stdout.strip()}"


@pytest.mark.parametrize("module", STREAMS)
def test_streams_import_only_the_stdlib_and_streams(module: str) -> None:
    code = (
        f"import sys; before = set(sys.modules); import {module}; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print(','.join(sorted(new - set(sys.stdlib_module_names) - {'streams'})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "", f"{module} pulls in {out.stdout.strip()}"


texts_st = st.text(min_size=0, max_size=20)


@given(
    text=texts_st,
    seq=st.integers(1, 10**6),
    t=st.integers(0, 2**62),
    envelope=st.sampled_from(["text", "openai"]),
)
def test_token_object_round_trips_in_both_envelopes(
    text: str, seq: int, t: int, envelope: str
) -> None:
    payload = encode_token("s1", seq, t, text, GenParams(envelope=envelope))
    assert b"\n" not in payload and b"\r" not in payload
    assert decode_token(json.loads(payload)) == TokenRecord("s1", seq, t, text)


def test_openai_envelope_is_a_chat_completion_chunk() -> None:
    first = json.loads(encode_token("ab", 1, 5_000_000_000, "Hi", GenParams(envelope="openai")))
    later = json.loads(encode_token("ab", 2, 5_000_000_000, " there", GenParams(envelope="openai")))
    assert first["object"] == "chat.completion.chunk" and first["created"] == 5
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "Hi"}
    assert later["choices"][0]["delta"] == {"content": " there"}
    assert later["choices"][0]["finish_reason"] is None


def test_decode_token_rejects_other_objects() -> None:
    with pytest.raises(ProtocolError):
        decode_token({"hello": 1})


def test_poll_batch_exact_bytes_and_round_trip() -> None:
    p1 = encode_token("s", 1, 10, "a", GenParams())
    p2 = encode_token("s", 2, 20, "é", GenParams())
    body = longpoll.encode_batch("s", [p1, p2], 2, True, "done")
    assert body.startswith(b'{"stream":"s","next":2,"done":true,"reason":"done","tokens":[{')
    batch = longpoll.decode_batch(body)
    assert (batch.next, batch.done, [t.text for t in batch.tokens]) == (2, True, ["a", "é"])
    assert longpoll.decode_batch(longpoll.encode_batch("s", [], 0, False, "")).tokens == []


def test_ndjson_lines_survive_any_chunking() -> None:
    lines = (
        ndjson.encode_started("s", 0)
        + b"".join(
            ndjson.encode_line(encode_token("s", i, i, f"t{i}", GenParams())) for i in range(1, 30)
        )
        + ndjson.encode_done("s", 29, "done")
    )
    rng = random.Random(1)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(lines)), 15))
        splitter = ndjson.LineSplitter()
        items = []
        for a, b in zip([0, *cuts], [*cuts, len(lines)], strict=True):
            items += [ndjson.parse_line(line) for line in splitter.feed(lines[a:b])]
        assert isinstance(items[0], websocket.Started) and isinstance(items[-1], websocket.Done)
        assert [t.seq for t in items[1:-1]] == list(range(1, 30))  # type: ignore[union-attr]
        assert splitter.pending == b""


def test_websocket_client_messages_parse_back() -> None:
    params = GenParams(tokens=3, rate=7.5, text="zh")
    assert websocket.parse_client_message(websocket.encode_start(params)) == websocket.Start(params)
    assert websocket.parse_client_message(websocket.encode_resume("x", 4)) == websocket.Resume(
        "x", 4
    )
    assert websocket.parse_client_message(websocket.encode_cancel()) == websocket.Cancel()
    with pytest.raises(ParamError):
        websocket.parse_client_message('{"type":"resume","stream":"x","after":-1}')


def test_websocket_token_message_is_spliced_without_reencoding() -> None:
    payload = encode_token("s", 3, 99, "x", GenParams())
    message = websocket.encode_token_message(payload)
    assert json.loads(message) == {"type": "token", **json.loads(payload)}
    assert websocket.parse_server_message(message) == TokenRecord("s", 3, 99, "x")


@given(st.binary(max_size=200))
def test_server_message_parser_raises_only_protocol_errors(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):  # anything else escaping fails the test
        websocket.parse_server_message(data)


@given(text=st.text(max_size=30), seq=st.integers(1, 10**6), t=st.integers(0, 2**63 - 1))
def test_text_envelope_fast_path_is_byte_identical_to_json_dumps(
    text: str, seq: int, t: int
) -> None:
    from transports.token import dumps

    sid = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
    expected = dumps({"stream": sid, "seq": seq, "t_emit_ns": t, "text": text})
    assert encode_token(sid, seq, t, text, GenParams()) == expected


@pytest.mark.parametrize(
    ("data", "param"),
    [
        ("[" * 100_000, None),  # json alone: RecursionError, not a ValueError
        ("[" * (jsonin.MAX_DEPTH + 1) + "]" * (jsonin.MAX_DEPTH + 1), None),
        ('{"a": {"b": 1, "b": 2}}', "b"),
        ('{"rate": NaN}', None),
        ("[Infinity]", None),
        ("[-Infinity]", None),
        (b"\xff", None),
        ("{", None),
        ("", None),
    ],
)
def test_load_json_refuses_with_a_param_error_only(data: str | bytes, param: str | None) -> None:
    with pytest.raises(ParamError) as caught:
        jsonin.load_json(data)
    assert caught.value.param == param


def test_load_json_reads_up_to_the_depth_limit() -> None:
    deepest = "[" * jsonin.MAX_DEPTH + "]" * jsonin.MAX_DEPTH
    assert jsonin.depth(jsonin.load_json(deepest)) == jsonin.MAX_DEPTH
    assert jsonin.load_json(b'{"a": [1, {"b": 2.5}], "c": null}') == {"a": [1, {"b": 2.5}],
                                                                         "c": None}  # fmt: skip
    shapes: list[object] = [1, [], {"a": [{}]}, [[1], [[2]]]]
    assert [jsonin.depth(v) for v in shapes] == [0, 1, 3, 3]


@given(st.recursive(st.none() | st.integers() | st.text(),
                    lambda kids: st.lists(kids) | st.dictionaries(st.text(), kids)))  # fmt: skip
def test_load_json_accepts_or_raises_a_param_error(value: object) -> None:
    text = json.dumps(value)
    try:
        assert jsonin.load_json(text) == value
    except ParamError:
        assert jsonin.depth(value) > jsonin.MAX_DEPTH


@pytest.mark.parametrize(
    ("mimetype", "charset", "ok"),
    [
        ("application/json", None, True),
        ("application/json", "utf-8", True),
        ("application/json", "UTF-8", True),
        ("application/vnd.pushlab+json", None, True),
        ("application/json", "latin-1", False),
        ("text/plain", None, False),
        ("application/x-www-form-urlencoded", None, False),
        ("multipart/form-data", None, False),
        ("application/octet-stream", None, False),
        ("text/json", None, False),
    ],
)
def test_only_json_media_types_are_read(mimetype: str, charset: str | None, ok: bool) -> None:
    if ok:
        jsonin.check_media_type(mimetype, charset)
    else:
        with pytest.raises(UnsupportedMediaType):
            jsonin.check_media_type(mimetype, charset)


@pytest.mark.parametrize(
    ("raw", "value"),
    [("5", 5), ("+5", 5), (5, 5), (5.0, 5)],
)
def test_integer_parameters_read_ascii_decimal_and_json_numbers(raw: object, value: int) -> None:
    assert parse_params({"tokens": raw}).tokens == value


@pytest.mark.parametrize(
    "raw",
    ["5_0", "\u0665", "\u00b2", " 5", "5 ", "5.0", "1e3", "0x10", "nan", "", "1" * 5000,
     True, 5.5, float("nan"), None, [5], {"n": 5}],
)  # fmt: skip
def test_integer_parameters_refuse_anything_else(raw: object) -> None:
    with pytest.raises(ParamError) as caught:
        parse_params({"tokens": raw})
    assert caught.value.param == "tokens" and len(caught.value.message) < 200


@pytest.mark.parametrize(
    ("raw", "ok"),
    [("2.5", True), ("-0.5e1", False), ("1e2", True), ("1E+2", True), (2.5, True),
     ("2.", False), (".5", False), ("1_000", False), ("\uff15", False), ("inf", False),
     ("Infinity", False), (float("inf"), False), (False, False), ("1e999", False)],
)  # fmt: skip
def test_numbers_from_text_are_strict_ascii_decimal(raw: object, ok: bool) -> None:
    if ok:
        assert parse_number({"wait": raw}, "wait", 0, 0, 1000) == float(raw)  # type: ignore[arg-type]
    else:
        with pytest.raises(ParamError):
            parse_number({"wait": raw}, "wait", 0, 0, 1000)


def test_websocket_close_reason_is_utf8_and_fits_a_control_frame() -> None:
    for message in ["x" * 500, "\u00e9" * 100, "\U0001f600" * 40, "bad \udcff header", ""]:
        reason = websocket.close_reason(message)
        assert len(reason) <= websocket.MAX_REASON_BYTES
        assert message.startswith(reason.decode("utf-8")) or "\\udcff" in reason.decode()


def test_websocket_messages_are_read_with_the_safe_loader() -> None:
    for text, param in [("[" * 5000, None), ('{"type": "start", "type": "cancel"}', "type"),
                        ('{"type": "start", "rate": NaN}', None),
                        ('{"type": "start", "tokens": "5_0"}', "tokens")]:  # fmt: skip
        with pytest.raises(ParamError) as caught:
            websocket.parse_client_message(text)
        assert caught.value.param == param
    error = websocket.encode_error({"error": {"message": "bad \udcff", "type": "t", "param": None}})
    assert json.loads(error)["error"]["message"] == "bad \udcff"
