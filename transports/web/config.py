"""The server's configuration, declared once: `ServerConfig` fields carry their flag's help,
choices and bounds, and the command line is generated from them both ways (stdlib only, so
the harness can build a server's argv without importing aiohttp).

    ServerConfig --to_argv()--> ["--gc", "scheduled", ...] --parse_config()--> ServerConfig

A field's flag is `--<name with dashes>` unless its metadata names another (`--no-accel-header`
clears `accel_buffering_header`). A bool flag is a switch away from the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import re
from collections.abc import Sequence
from typing import Any, NoReturn

GC_FULL_INTERVAL_S = 30.0  # "scheduled" policy: one full collection this often, no other


def _opt(default: Any, help: str, **meta: Any) -> Any:
    """A config field: its default and its flag's help (`%(default)s` allowed), plus any of
    `flag`, `metavar`, `choices`, `min`, `max`."""
    return dataclasses.field(default=default, metadata={"help": help, **meta})


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Server-wide settings, in the order `--help` lists their flags."""

    host: str = _opt("127.0.0.1", "address to listen on (default %(default)s)")
    port: int = _opt(8000, "TCP port, 0 = any free one (default %(default)s)", min=0, max=65535)
    tls: bool = _opt(
        False,
        "serve HTTPS with a lab CA generated at start (netem/pki.py; the ready line names its "
        "ca.pem, in a temporary directory removed at exit)",
    )
    tls_cert: str = _opt(
        "", "serve HTTPS with this PEM certificate chain (with --tls-key)", metavar="PATH"
    )
    tls_key: str = _opt("", "the PEM private key of --tls-cert", metavar="PATH")
    heartbeat_s: float = _opt(
        15.0,
        "seconds of silence before an SSE/NDJSON keep-alive; 0 = never (default %(default)s)",
        min=0,
    )
    retry_ms: int = _opt(1000, "SSE reconnection delay sent as retry: (default %(default)s ms)",
                         min=0)  # fmt: skip
    retention_s: float = _opt(
        60.0, "seconds a finished stream stays resumable (default %(default)s)", min=0
    )
    idle_timeout_s: float = _opt(
        30.0,
        "seconds a running stream may go unread before it is cancelled (default %(default)s)",
        min=0,
    )
    max_streams: int = _opt(
        20_000,
        "running streams at once before new ones get 503; finished ones are bounded by "
        "--memory-budget-mb instead (default %(default)s)",
        min=1,
    )
    ws_compress: bool = _opt(False, "accept WebSocket permessage-deflate")
    wt_port: int = _opt(
        0,
        "UDP port of the WebTransport endpoint (HTTP/3): 0 = the number of the HTTP port when "
        "--port is fixed, else any free one; -1 = no WebTransport (default %(default)s)",
        min=-1,
        max=65535,
    )
    quic_cc: str = _opt(
        "reno",
        "congestion controller of the server's QUIC connections (aioquic's; its default is "
        "reno, Linux TCP's is cubic) (default %(default)s)",
        choices=("reno", "cubic"),
    )
    wt_cert_days: float = _opt(
        10.0,
        "validity of the WebTransport certificate generated at start; browsers accept a "
        "serverCertificateHashes certificate of at most 14 days (default %(default)s)",
        min=0.01,
        max=14.0,
    )
    cancel_on_disconnect: bool = _opt(
        False,
        "stop a stream when its SSE/NDJSON/WebSocket reader disconnects "
        "(no resume); default: keep generating until --idle-timeout-s",
    )
    accel_buffering_header: bool = _opt(
        True, "do not send 'X-Accel-Buffering: no' (lets nginx buffer)", flag="--no-accel-header"
    )
    uvloop: bool = _opt(False, "run on uvloop")
    upstream: str = _opt(
        "",
        "relay a real model: an OpenAI-compatible base URL ending in /v1 "
        "(llama.cpp, vLLM, Ollama, a hosted API, another pushlab)",
        metavar="URL",
    )
    upstream_key_env: str = _opt(
        "", "environment variable holding the upstream's API key", metavar="NAME"
    )
    upstream_model: str = _opt(
        "pushlab-synthetic", "model name sent upstream (default %(default)s)"
    )
    upstream_prompt: str = _opt("", "prompt for streams started without chat messages")
    upstream_extra: str = _opt(
        "", "extra request fields for the upstream, as a JSON object", metavar="JSON"
    )
    gc: str = _opt(
        "auto",
        "garbage collector policy: CPython's own, or none but a full collection "
        f"every {GC_FULL_INTERVAL_S:g} s (default %(default)s)",
        choices=("auto", "scheduled"),
    )

    log: str = _opt(
        "memory",
        "where streams live: 'memory' (this process only) or a Redis URL redis://HOST:PORT[/DB] "
        "shared by every node, so a stream survives its node (default %(default)s)",
        metavar="memory|URL",
    )
    node_id: str = _opt(
        "", "this node's name in the shared log (default: host-pid)", metavar="NAME"
    )
    workers: int = _opt(
        1,
        "server processes on one port (SO_REUSEPORT); more than 1 needs a shared --log "
        "(default %(default)s)",
        min=1,
        max=64,
    )
    reuse_port: bool = _opt(
        False, "share the port with other server processes (SO_REUSEPORT; --workers sets it)"
    )
    lease_ms: int = _opt(
        1000,
        "a node's lease on the streams it generates: renewed every third of it; when it "
        "lapses another node takes them over (default %(default)s ms)",
        min=100,
        max=600_000,
    )
    log_max_len: int = _opt(
        0,
        "tokens of each stream the shared log keeps (older ones are trimmed; a resume from "
        "before them is told of the gap); 0 = the whole stream (default %(default)s)",
        min=0,
    )

    # -- who may connect and what one client may take (docs/SECURITY.md) --
    auth: bool = _opt(
        False,
        "require a credential on every stream route (a bearer token, the session cookie, or "
        "a WebSocket ticket); a stream is then readable and cancellable by its creator only. "
        "Off by default on loopback; required on any other address (or --allow-anonymous)",
    )
    auth_secret_file: str = _opt(
        "",
        "the key credentials are signed with (32 bytes or more; `pushlab token` mints them); "
        "default with --auth: a fresh key in a temporary file, named in the ready line",
        metavar="PATH",
    )
    auth_query: bool = _opt(
        False,
        "also accept a bearer token as ?access_token= (it then lands in logs, history and "
        "Referer headers; for clients that can set no header and take no cookie)",
    )
    allow_anonymous: bool = _opt(
        False,
        "serve without --auth on a non-loopback address (a lab network of your own, such as "
        "the experiments' namespaces: anyone who can reach it reads and cancels any stream)",
    )
    allowed_hosts: str = _opt(
        "",
        "Host names served besides loopback names and IP literals, comma-separated ('*': "
        "any; a DNS-rebinding page sends its own name, so keep this list short)",
        metavar="NAMES",
    )
    allowed_origins: str = _opt(
        "",
        "origins besides the server's own allowed to open WebSockets and, with CORS, to call "
        "the HTTP routes, comma-separated scheme://host[:port] (default: none)",
        metavar="ORIGINS",
    )
    lab_debug: bool = _opt(
        False,
        "mount POST /debug/cut (resets the caller's connections; the page's Cut button), "
        "from the page's own origin only",
    )
    max_connections: int = _opt(
        0,
        "open connections at once; those beyond are closed at accept (0: the descriptor "
        "limit less 256, so the server never runs out of descriptors) (default %(default)s)",
        min=0,
    )
    client_share: float = _opt(
        0.5,
        "the share of connections, running streams and held-token memory one client (its "
        "identity, else its address) may take (default %(default)s)",
        min=0.01,
        max=1.0,
    )
    memory_budget_mb: float = _opt(
        1024.0,
        "memory for the tokens all streams hold: when spent, finished streams are forgotten "
        "oldest first, then new streams get 503 with Retry-After (default %(default)s MB)",
        min=1,
    )
    write_timeout_s: float = _opt(
        30.0,
        "a streaming response whose pending write makes no progress for this long is "
        "closed (a reader that stopped reading) (default %(default)s s)",
        min=0.1,
    )
    header_timeout_s: float = _opt(
        10.0,
        "time a connection has to send a whole request head (default %(default)s s)",
        min=0.1,
    )
    body_timeout_s: float = _opt(
        10.0, "time a request has to send its whole body (default %(default)s s)", min=0.1
    )
    keepalive_s: float = _opt(
        15.0,
        "an idle keep-alive connection is closed after this long (default %(default)s s)",
        min=0.1,
    )

    @property
    def https(self) -> bool:
        """Whether the server terminates TLS itself (a lab CA, or the given files)."""
        return self.tls or bool(self.tls_cert)

    def problem(self) -> str:
        """What makes this config unusable as a whole ("" if nothing): the checks no single
        flag's bounds can make (server.main and `pushlab serve --front` refuse it, exit 2)."""
        if bool(self.tls_cert) != bool(self.tls_key):
            return "--tls-cert and --tls-key go together: give both or neither"
        if self.tls and self.tls_cert:
            return "--tls generates a lab certificate: give it or --tls-cert/--tls-key, not both"
        if self.log != "memory":
            from streams.errors import ParamError
            from streams.redislog import parse_url

            try:
                parse_url(self.log)
            except ParamError:
                return f"--log must be 'memory' or a redis://HOST:PORT URL, not {self.log!r}"
        if not self.auth and not self.allow_anonymous and not is_loopback(self.host):
            return (
                f"serving {self.host} (not loopback) needs --auth, or --allow-anonymous on a "
                "network only you can reach"
            )
        if self.auth_secret_file and not self.auth:
            return "--auth-secret-file needs --auth"
        for origin in split_list(self.allowed_origins):
            if not _ORIGIN.fullmatch(origin):
                return f"--allowed-origins: {origin!r} is not scheme://host[:port]"
        if self.workers > 1 and self.log == "memory":
            return "--workers above 1 needs a shared log: add --log redis://HOST:PORT"
        return ""

    def to_argv(self) -> list[str]:
        """The flags that give this config when parsed (only those that differ from the
        defaults, so an argv stays readable)."""
        argv: list[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value == f.default:
                continue
            flag = _flag(f)
            argv += [flag] if isinstance(value, bool) else [flag, str(value)]
        return argv


_ORIGIN = re.compile(
    r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?"
)


def split_list(text: str) -> list[str]:
    """A comma-separated flag value as a list, blanks dropped."""
    return [item.strip() for item in text.split(",") if item.strip()]


def is_loopback(host: str) -> bool:
    """Whether a listening address (or name) reaches this machine only."""
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _flag(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("flag", "--" + f.name.replace("_", "-")))


def _bounded(kind: type, low: float | None, high: float | None) -> Any:
    """An argparse `type` converting to `kind` and checking the bounds (argparse turns the
    ValueError into its usage error)."""

    def convert(text: str) -> Any:
        value = kind(text)
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text!r}")
        return value

    convert.__name__ = kind.__name__  # argparse names the type in "invalid int value"
    return convert


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ServerConfig field, its dest the field's name."""
    for f in dataclasses.fields(ServerConfig):
        meta, flag = f.metadata, _flag(f)
        if isinstance(f.default, bool):
            action = "store_false" if f.default else "store_true"
            parser.add_argument(flag, dest=f.name, action=action, help=meta["help"])
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "default": f.default, "help": meta["help"]}
        if "metavar" in meta:
            kwargs["metavar"] = meta["metavar"]
        if "choices" in meta:
            kwargs["choices"] = meta["choices"]
        if not isinstance(f.default, str):
            kwargs["type"] = _bounded(type(f.default), meta.get("min"), meta.get("max"))
        parser.add_argument(flag, **kwargs)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error message and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """`pushlab serve` / `python server.py`: every ServerConfig field as a flag."""
    parser = _Parser(
        prog="pushlab serve",
        description="Serve every transport on one port.",
        epilog="pushlab serve --front nginx|caddy [--front-port P] (not server.py): run the "
        "server as a child behind nginx or Caddy, which terminates TLS with HTTP/2 using a "
        "lab CA made at start; the ready line names its ca.pem. --front-port: the front's "
        "port on 127.0.0.1 (default 0: any free one).",
    )
    add_flags(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServerConfig)})


def parse_config(argv: Sequence[str] | None = None) -> ServerConfig:
    """The config `argv` gives; exits 2 with one line on a bad flag or value. Flags that do
    not go together are `ServerConfig.problem()`'s, checked where a server starts."""
    return config_from_args(build_parser().parse_args(argv))
