"""`pushlab bench` through a TLS front over HTTP/2, as a user runs it after `pushlab serve
--front nginx`: the records say what carried the tokens; a wrong CA fails every stream with
a line naming the CA file, and a non-zero exit."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.cli import main
from netem.fronts import serve
from netem.pki import make_lab_pki
from records import store
from tests.support import UNIT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90 * UNIT)]

FEW = ["--tokens", "5", "--rate", "200", "--ttft-ms", "0", "--no-progress", "--no-charts"]


def test_bench_over_http2_through_nginx_and_a_wrong_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with serve("nginx") as path:
        url = path.target.url
        argv = ["bench", "--server", url, "--ca", path.ca_file, "--http", "2",
                "--transport", "sse,websocket", "--clients", "2", *FEW]  # fmt: skip
        assert main([*argv, "--out", str(tmp_path / "h2")]) == 0
        streams = store.load(tmp_path / "h2").streams.set_index("transport")
        assert set(streams.loc["sse", "http_version"]) == {"2"}
        # no RFC 8441 in nginx 1.22: the WebSocket keeps an HTTP/1.1 connection of its own
        assert set(streams.loc["websocket", "http_version"]) == {"1.1"}
        assert set(streams["tls_version"]) == {"TLSv1.3"} and (streams["lost"] == 0).all()

        other = make_lab_pki(tmp_path / "other")
        capsys.readouterr()
        argv = ["bench", "--server", url, "--ca", str(other.ca_cert), "--transport", "sse",
                "--clients", "1", "--no-warmup", *FEW, "--out", str(tmp_path / "bad")]  # fmt: skip
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert f"not trusted by CA file {other.ca_cert}" in err
