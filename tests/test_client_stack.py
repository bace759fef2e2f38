"""The client stack without a server: reconnect, backoff and resume over scripted connections.

Each test hands a client a `FakeConnector` (clients/fake.py) whose connections play what a
server would send, built with the real codecs, and an instant `RecordingSleep`; it then
checks what the client wrote on each connection and what its record says. The last tests
read a run stored under schema 3 through today's loader (the column renames of schema 4).
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clients.base import Client, ClientOptions, Target
from clients.fake import FakeConnector, RecordingSleep, Script, http_response, requests_written
from clients.ndjson import NDJSONClient
from clients.poll import LongPollClient
from clients.recorder import StreamRecord, stream_row
from clients.sse import SSEClient
from records import store
from records.schema import (
    ADDED_IN_5,
    RENAMED_IN_4,
    SCHEMA_VERSION,
    STREAM_COLUMNS,
    Tables,
    empty_tables,
)
from streams.errors import PushlabError, StreamLimitError, StreamNotFound
from streams.generator import texts
from streams.params import GenParams
from tests.support import UNIT
from transports import ndjson, sse
from transports.errors import exception_body
from transports.longpoll import encode_batch
from transports.token import dumps, encode_token

STREAM = "s1"
PARAMS = GenParams(tokens=6, rate=1000.0, ttft_ms=0.0)
TEXTS = texts(PARAMS)
RETRY_MS = 1500
JSON = [("Content-Type", "application/json")]


def payload(seq: int) -> bytes:
    return encode_token(STREAM, seq, 1_000_000 + seq, TEXTS[seq - 1], PARAMS)


def sse_reply(after: int) -> bytes:
    """What `GET /sse` sends for the stream from `after` on, to its end."""
    chunks = [sse.encode_open(STREAM, after, RETRY_MS)]
    chunks += [sse.encode_token(STREAM, s, payload(s)) for s in range(after + 1, 7)]
    return http_response(200, [("Content-Type", "text/event-stream")], [*chunks, sse.DONE])


def ndjson_reply(after: int) -> bytes:
    lines = [ndjson.encode_started(STREAM, after)]
    lines += [ndjson.encode_line(payload(s)) for s in range(after + 1, 7)]
    lines.append(ndjson.encode_done(STREAM, 6, "done"))
    return http_response(200, [("Content-Type", "application/x-ndjson")], lines)


def batch_reply(seqs: range, done: bool, status: int = 200) -> bytes:
    body = encode_batch(STREAM, [payload(s) for s in seqs], seqs.stop - 1 if seqs else 0, done,
                        "done" if done else "")  # fmt: skip
    return http_response(status, [*JSON, ("Content-Length", str(len(body)))], [body])


def error_reply(exc: PushlabError) -> bytes:
    body = dumps(exception_body(exc))
    return http_response(exc.status, [*JSON, ("Content-Length", str(len(body)))], [body])


async def run(client: Client, connector: FakeConnector) -> StreamRecord:
    rec = StreamRecord(client.key, client.name, PARAMS.tokens)
    await asyncio.wait_for(client.run(Target("fake", 1), PARAMS, rec), 5 * UNIT)
    return rec


def client_of(
    cls: type[Client], scripts: list[Script], **options: Any
) -> tuple[Client, FakeConnector, RecordingSleep]:
    """A client of `cls` whose connections and backoff sleeps are the fakes returned."""
    connector, sleep = FakeConnector(scripts), RecordingSleep()
    return cls(ClientOptions(**options), connector=connector, sleep=sleep), connector, sleep


def header(request: object, name: bytes) -> bytes | None:
    return dict(request.headers).get(name)  # type: ignore[attr-defined]


async def test_sse_resumes_with_last_event_id_after_a_cut() -> None:
    first = sse_reply(0)
    cut = first.index(f"id: {STREAM}:4".encode()) + 6  # inside token 4's event
    client, connector, sleep = client_of(
        SSEClient, [Script([first], cut_after=cut, end="reset", chunk=40), Script([sse_reply(3)])]
    )
    rec = await run(client, connector)
    row = stream_row(rec)
    sent = [requests_written(conn) for conn in connector.connections]
    assert [len(r) for r in sent] == [1, 1]
    assert header(sent[0][0], b"last-event-id") is None
    assert header(sent[1][0], b"last-event-id") == f"{STREAM}:3".encode()
    assert (row["lost"], row["duplicated"], row["tokens_received"]) == (0, 0, 6)
    assert rec.text() == "".join(TEXTS) and rec.reconnects == 1 and rec.error == ""
    assert (row["connections"], row["stack"]) == (2, "fake")
    assert sleep.delays == [RETRY_MS / 1e3]  # the server's retry: outweighs a 50 ms backoff


async def test_long_poll_resumes_from_its_cursor_on_a_new_connection() -> None:
    created = batch_reply(range(0), False, status=201)
    client, connector, _ = client_of(
        LongPollClient,
        # the third request (the poll after seq 3) is met by a reset
        [
            Script([created, batch_reply(range(1, 4), False)], end="reset"),
            Script([batch_reply(range(4, 7), True)]),
        ],
    )
    rec = await run(client, connector)
    targets = [[r.target for r in requests_written(c)] for c in connector.connections]
    assert targets[0] == [
        b"/longpoll",
        f"/longpoll/{STREAM}?after=0&wait=25".encode(),
        f"/longpoll/{STREAM}?after=3&wait=25".encode(),
    ]
    assert targets[1] == [f"/longpoll/{STREAM}?after=3&wait=25".encode()]
    row = stream_row(rec)
    assert (row["lost"], row["duplicated"], rec.reconnects, rec.end_reason) == (0, 0, 1, "done")
    assert client.resume.after == 6 and client.resume.stream_id == STREAM


async def test_ndjson_resumes_the_same_stream_after_the_last_seq() -> None:
    first = ndjson_reply(0)
    cut = first.index(b'"seq":4')  # token 3 is whole, token 4 is not
    client, connector, _ = client_of(
        NDJSONClient, [Script([first], cut_after=cut), Script([ndjson_reply(3)])]
    )
    rec = await run(client, connector)
    resumed = requests_written(connector.connections[1])[0]
    assert resumed.target == f"/ndjson?stream={STREAM}&after=3".encode()
    row = stream_row(rec)
    assert (row["lost"], row["duplicated"], rec.reconnects) == (0, 0, 1)


async def test_gives_up_after_max_reconnects_with_the_error_recorded() -> None:
    client, connector, sleep = client_of(
        NDJSONClient, [Script(end="reset") for _ in range(4)], max_reconnects=3
    )
    rec = await run(client, connector)
    assert len(connector.connections) == 4 and rec.reconnects == 3 and len(sleep.delays) == 3
    assert "reset (scripted)" in rec.error and rec.end_reason == ""
    assert stream_row(rec)["lost"] == PARAMS.tokens


async def test_a_4xx_is_not_retried_and_a_5xx_is() -> None:
    gone = StreamNotFound("no stream 'x'")
    client, connector, sleep = client_of(NDJSONClient, [Script([error_reply(gone)])])
    rec = await run(client, connector)
    assert rec.error.endswith("HTTP 404: no stream 'x'")
    assert (len(connector.connections), rec.reconnects, sleep.delays) == (1, 0, [])

    busy = error_reply(StreamLimitError("too many streams"))
    client, connector, sleep = client_of(NDJSONClient, [Script([busy]), Script([ndjson_reply(0)])])
    rec = await run(client, connector)
    assert (rec.error, rec.reconnects, len(sleep.delays), len(rec.texts)) == ("", 1, 1, 6)


async def test_backoff_doubles_to_its_cap_with_seeded_equal_jitter() -> None:
    client, connector, sleep = client_of(
        NDJSONClient,
        [Script(end="reset") for _ in range(6)],
        max_reconnects=5, backoff_ms=100.0, backoff_max_ms=300.0, seed=7,
    )  # fmt: skip
    await run(client, connector)
    bases_ms = [100.0, 200.0, 300.0, 300.0, 300.0]
    rng = random.Random(7)
    assert sleep.delays == [b * (0.5 + rng.random() / 2) / 1e3 for b in bases_ms]
    assert all(b / 2e3 <= d <= b / 1e3 for b, d in zip(bases_ms, sleep.delays, strict=True))


async def test_progress_resets_the_failure_count() -> None:
    """Three cuts, each after a new token: more cuts than max_reconnects, yet it completes."""
    scripts = []
    for after in range(3):
        reply = ndjson_reply(after)
        scripts.append(Script([reply], cut_after=reply.index(f'"seq":{after + 2}'.encode())))
    scripts.append(Script([ndjson_reply(3)]))
    client, connector, sleep = client_of(NDJSONClient, scripts, max_reconnects=1)
    rec = await run(client, connector)
    assert (rec.reconnects, rec.error, len(rec.texts)) == (3, "", 6)
    assert len(set(sleep.delays)) == 3 and max(sleep.delays) <= 0.05  # first delay each time


# --------------------------------------------------------------------------- stored runs


def _old_run(tmp_path: Path, csv_only: bool) -> Path:
    """A run directory as schema 3 stored it: TCP-named columns, no `stack`, none of 5's."""
    values = {"int64": 5, "float64": 0.5, "string": "x"}
    row = {c: values[t] for c, t in STREAM_COLUMNS.items()}
    row.update(connections=2, packets_up=7, packets_down=9)
    tables = Tables(empty_tables().tokens, pd.DataFrame([row]).astype(STREAM_COLUMNS))
    run_dir = store.save(tables, {"schema_version": 3}, tmp_path / "old")
    old = tables.streams.drop(columns=["stack", *ADDED_IN_5]).rename(
        columns={new: old for old, new in RENAMED_IN_4.items()}
    )
    old.to_csv(run_dir / "streams.csv", index=False)
    table = pa.Table.from_pandas(old, preserve_index=False)
    meta = {**(table.schema.metadata or {}), b"pushlab.schema_version": b"3"}
    pq.write_table(table.replace_schema_metadata(meta), run_dir / "streams.parquet")
    if csv_only:
        for name in ("streams", "tokens"):
            (run_dir / f"{name}.parquet").unlink()
    assert json.loads((run_dir / "meta.json").read_text())["schema_version"] == 3
    return run_dir


@pytest.mark.parametrize("csv_only", [False, True], ids=["parquet", "csv"])
def test_a_schema_3_run_loads_with_the_renamed_columns(tmp_path: Path, csv_only: bool) -> None:
    assert SCHEMA_VERSION == 5
    streams = store.load(_old_run(tmp_path, csv_only)).streams
    assert list(streams.columns) == list(STREAM_COLUMNS)
    got = streams.iloc[0]
    assert (got["connections"], got["packets_up"], got["packets_down"]) == (2, 7, 9)
    assert got["stack"] == "tcp"
    # version 5's columns: what every stream before it was (cleartext HTTP/1.1, one a
    # connection), with the layers it did not count marked -1
    assert (got["http_version"], got["tls_version"], got["streams_per_conn"]) == ("1.1", "", 1)
    assert got["body_bytes_down"] == -1 and got["tls_records_down"] == -1


def test_a_current_run_is_not_renamed(tmp_path: Path) -> None:
    """The upgrade only touches old runs: a schema-4 run keeps its own `stack`."""
    row = {c: {"int64": 1, "float64": 0.0, "string": "quic"}[t] for c, t in STREAM_COLUMNS.items()}
    tables = Tables(empty_tables().tokens, pd.DataFrame([row]).astype(STREAM_COLUMNS))
    loaded = store.load(store.save(tables, {}, tmp_path / "new")).streams
    assert loaded.iloc[0]["stack"] == "quic"
