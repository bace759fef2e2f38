"""The `pushlab` command: a thin adapter over plain functions.

pushlab serve [--port 8000 ...]        run the server (same flags as python server.py)
pushlab serve --front nginx|caddy      the server behind a real proxy terminating TLS + HTTP/2
pushlab bench --transport all ...      measure one configuration, write tables + meta
pushlab run latency [--out DIR]        run an experiment, write tables, charts, report
pushlab list                           transports and experiments
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from clients import cluster
from clients.base import ClientOptions, Target
from clients.stack import Stack
from experiments import spec as run_spec
from experiments.catalog import EXPERIMENTS, SUITE
from experiments.suite import save_run
from records.schema import Tables
from streams.errors import ClusterError, ClusterUnavailable, ParamError
from streams.params import CORPORA, ENVELOPES, GenParams, parse_params
from transports.registry import TRANSPORTS
from transports.web.config import ServerConfig


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error message and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _add_generation_flags(p: argparse.ArgumentParser) -> None:
    d = GenParams()
    g = p.add_argument_group("generation (same names as the wire parameters)")
    g.add_argument(
        "--tokens", type=int, default=d.tokens, help="tokens per answer (default %(default)s)"
    )
    g.add_argument(
        "--rate", type=float, default=d.rate, help="tokens per second (default %(default)s)"
    )
    g.add_argument(
        "--ttft-ms",
        type=float,
        default=d.ttft_ms,
        help="delay before the first token, the prefill, in ms (default %(default)s)",
    )
    g.add_argument(
        "--jitter",
        type=float,
        default=d.jitter,
        help="relative spread of token gaps, 0..1; 0 = metronome (default %(default)s)",
    )
    g.add_argument("--seed", type=int, default=d.seed, help="generator seed (default %(default)s)")
    g.add_argument("--text", choices=CORPORA, default=d.text, help="corpus (default %(default)s)")
    g.add_argument(
        "--envelope",
        choices=ENVELOPES,
        default=d.envelope,
        help="token object: pushlab's own or OpenAI chunk JSON (default %(default)s)",
    )


def _add_client_flags(p: argparse.ArgumentParser) -> None:
    d = ClientOptions()
    g = p.add_argument_group("clients")
    g.add_argument(
        "--server",
        metavar="URL",
        type=run_spec.argtype("server"),
        help="measure a server already running there (or a proxy in front of it); "
        "default: start one on 127.0.0.1",
    )
    g.add_argument(
        "--method",
        choices=("GET", "POST"),
        default=d.method,
        help="sse/ndjson/oneshot: query string or JSON body (default %(default)s)",
    )
    g.add_argument(
        "--interval-ms",
        type=float,
        default=d.interval_ms,
        help="short polling: ms between polls (default %(default)s)",
    )
    g.add_argument(
        "--wait-s",
        type=float,
        default=d.wait_s,
        help="long polling: s the server may hold a poll (default %(default)s)",
    )
    g.add_argument(
        "--max-reconnects",
        type=int,
        default=d.max_reconnects,
        help="reconnects a client tries before giving up (default %(default)s)",
    )
    g.add_argument("--ws-compress", action="store_true", help="WebSocket: offer permessage-deflate")
    g.add_argument(
        "--ca",
        metavar="FILE",
        default="",
        help="an https --server: the CA certificate to trust (`pushlab serve --tls` or "
        "`--front` prints its path in the ready line)",
    )
    g.add_argument(
        "--http",
        choices=("1.1", "2"),
        default="1.1",
        help="HTTP version to an https --server; 2 needs a front (pushlab serve --front "
        "nginx|caddy): aiohttp speaks HTTP/1.1 only (default %(default)s)",
    )
    g.add_argument(
        "--net",
        metavar="SPEC",
        type=run_spec.argtype("net"),
        default="",
        help=run_spec.help_of("net") + " (up./down. prefix for one direction)",
    )


def _params(args: argparse.Namespace) -> GenParams:
    values = {
        "tokens": args.tokens,
        "rate": args.rate,
        "ttft_ms": args.ttft_ms,
        "jitter": args.jitter,
        "seed": args.seed,
        "text": args.text,
        "envelope": args.envelope,
    }
    return parse_params(values)


def _options(args: argparse.Namespace) -> ClientOptions:
    if args.interval_ms < 0 or args.wait_s < 0 or args.max_reconnects < 0:
        raise ParamError("--interval-ms, --wait-s and --max-reconnects must not be negative")
    return ClientOptions(
        max_reconnects=args.max_reconnects,
        interval_ms=args.interval_ms,
        wait_s=args.wait_s,
        ws_compress=args.ws_compress,
        method=args.method,
    )


def _stack(args: argparse.Namespace) -> Stack:
    """The client stack for `--server`, `--ca` and `--http`, or a one-line ParamError."""
    secure = bool(args.server) and Target.parse(args.server).secure
    if secure and not args.ca:
        raise ParamError(
            f"--server {args.server} is https: give --ca FILE, the CA certificate to trust "
            "(pushlab serve prints it as ca=...)",
            param="ca",
        )
    if args.ca and not secure:
        raise ParamError("--ca needs an https --server", param="ca")
    if args.http == "2" and not secure:
        raise ParamError("--http 2 needs an https --server (pushlab serve --front nginx|caddy)",
                         param="http")  # fmt: skip
    if args.ca and not os.access(args.ca, os.R_OK):
        raise ParamError(f"--ca {args.ca}: no readable CA file there", param="ca")
    return Stack(http=args.http, tls=secure, ca_file=os.path.abspath(args.ca) if args.ca else "")


# experiments whose fleets go through FleetPool or run_points (the others' clients run in
# this process, so a cluster would be ignored: they refuse --cluster instead)
CLUSTER_EXPERIMENTS = ("latency", "rtt", "reconnect", "relay", "scale", "idle")


def _use_cluster(args: argparse.Namespace) -> None:
    """`--cluster`: every FleetPool of this run is the cluster's (clients/cluster.py)."""
    if args.cluster and args.command == "run" and args.experiment not in CLUSTER_EXPERIMENTS:
        takes = ", ".join(CLUSTER_EXPERIMENTS)
        message = f"{args.experiment} runs its clients in this process: --cluster takes {takes}"
        raise ParamError(message, param="cluster")
    cluster.set_default(args.cluster)


def cmd_bench(args: argparse.Namespace) -> int:
    from experiments import engine as bench
    from records import meta

    _use_cluster(args)
    # the clean measurement unless told otherwise: uvloop where importable, enough client
    # processes for the clients, and the server's collector out of the way when they are many
    spec = bench.BenchSpec(
        transports=args.transport,
        clients=args.clients,
        params=_params(args),
        server=args.server,
        net=args.net,
        options=_options(args),
        warmup=not args.no_warmup,
        workers=bench.auto_workers(args.clients) if args.workers == "auto" else args.workers,
        uvloop=bench.uvloop_available() if args.uvloop is None else args.uvloop,
        server_gc=args.server_gc or bench.auto_server_gc(args.clients),
        stack=_stack(args),
    )
    started = dt.datetime.now(dt.UTC)
    run_id = meta.new_run_id("bench", started)
    tables, load = bench.run_measured(spec, run_id=run_id, progress=not args.no_progress)
    record = bench.bench_record(spec, load)
    out = save_run(
        tables,
        "bench",
        record,
        run_id,
        started,
        args.out or _root() / run_id,
        charts=not args.no_charts,
    )
    _print_summary(tables)
    print(record.harness_summary())
    print(f"results: {out}")
    errors = tables.streams["error"][tables.streams["error"] != ""]
    for message, count in errors.value_counts().head(3).items():  # what failed, in its words
        print(f"pushlab bench: {count} stream(s) failed: {message}", file=sys.stderr)
    return 1 if len(errors) else 0


def cmd_run(args: argparse.Namespace) -> int:
    from records import meta

    experiment = EXPERIMENTS[args.experiment]
    _use_cluster(args)
    spec = experiment.spec()
    if args.quick:
        spec = experiment.quick(spec)
    given = {s.field: getattr(args, s.field) for s in run_spec.SETTINGS}
    spec = run_spec.apply(spec, {k: v for k, v in given.items() if v is not None}, args.experiment)
    spec = apply_settings(spec, args.set or [])
    started = dt.datetime.now(dt.UTC)
    run_id = meta.new_run_id(experiment.name, started)
    tables = experiment.execute(spec, run_id=run_id, progress=not args.no_progress)
    out = save_run(tables, experiment, spec, run_id, started, args.out or _root() / run_id)
    _print_summary(tables)
    print(f"report: {out / 'report.md'}")
    return 0


def apply_settings(spec: Any, settings: list[str]) -> Any:
    """`--set field=value` onto an experiment's spec, typed from the field's current value
    (tuples take comma lists, e.g. ns=10,100,10000)."""
    fields = {f.name for f in dataclasses.fields(spec)}
    for item in settings:
        name, sep, text = item.partition("=")
        if not sep or name not in fields:
            known = ", ".join(sorted(fields))
            raise ParamError(f"--set takes FIELD=VALUE with FIELD one of: {known}", param="set")
        spec = dataclasses.replace(spec, **{name: _typed(name, getattr(spec, name), text)})
    return spec


def _typed(name: str, current: object, text: str) -> object:
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if isinstance(current, tuple):
            kind = type(current[0]) if current else str
            return tuple(kind(part) for part in text.split(",") if part)
        if isinstance(current, int | float | str):
            return type(current)(text)
        if current is None:  # optional number, e.g. max_n
            return int(text) if text.lstrip("-").isdigit() else float(text)
    except ValueError:
        pass
    raise ParamError(f"--set {name}: cannot read {text!r} as {type(current).__name__}", param=name)


def _root() -> Path:
    from records import store

    return store.results_root()


def cmd_report(args: argparse.Namespace) -> int:
    from experiments import suite

    if args.runs:
        path = suite.report_from(args.runs, args.out)
    else:
        names = tuple(args.only) if args.only else SUITE
        path = suite.run_suite(
            names, quick=not args.full, out=args.out, progress=not args.no_progress
        )
    print(f"report: {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from presentation.compare import compare

    table = compare(args.a, args.b, EXPERIMENTS)
    if table.empty:
        raise ParamError("the two runs share no measured figure", param="run")
    with _pandas_wide():
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


def _experiment_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown experiment {unknown[0] if unknown else ''!r}")
    return names


def cmd_list(args: argparse.Namespace) -> int:
    print("transports:")
    width = max(map(len, TRANSPORTS))
    for t in TRANSPORTS.values():
        print(f"  {t.key:<{width}} {t.summary}")
    print("experiments:")
    width = max(map(len, EXPERIMENTS))
    for name in EXPERIMENTS:
        print(f"  {name:<{width}} {EXPERIMENTS[name].question}")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    """`pushlab token`: mint a credential with a server's key, as its operator (the key file
    is what `pushlab serve --auth --auth-secret-file` reads, or the ready line's secret=)."""
    from streams.credentials import Authority, check_identity

    try:
        check_identity(args.identity)
        credential = Authority(args.secret_file.read_bytes()).mint(
            args.identity, args.kind, args.ttl_s
        )
    except (OSError, ValueError) as exc:
        raise ParamError(str(exc)) from None
    print(credential)
    return 0


FRONTS = ("nginx", "caddy")


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, got {text!r}")
    return port


def cmd_serve(argv: list[str]) -> int:
    """`pushlab serve [server flags]`: the server itself. With `--front nginx|caddy
    [--front-port P]`: the server as a child on a free port (plain HTTP), behind that proxy
    terminating TLS with HTTP/2 (a lab CA made now, removed at exit), until SIGINT/SIGTERM."""
    import server

    front_parser = _Parser(prog="pushlab serve", add_help=False)
    front_parser.add_argument("--front", choices=FRONTS)
    front_parser.add_argument("--front-port", type=_port)
    # HTTP/3 (QUIC on UDP, the front's port number) beside h1/h2: Caddy's, off by default
    front_parser.add_argument("--http3", action="store_true")
    known, rest = front_parser.parse_known_args(argv)
    if known.http3 and known.front != "caddy":
        front_parser.error("--http3 needs --front caddy (nginx 1.22 has no HTTP/3)")
    if known.front is None:
        if known.front_port is not None:
            front_parser.error("--front-port needs --front nginx|caddy")
        return server.main(argv)
    if "-h" in rest or "--help" in rest:
        return server.main(["--help"])
    from transports.web.config import parse_config

    config = parse_config(rest)  # exits 2 with one line on a bad flag
    default = ServerConfig()
    if problem := config.problem():
        front_parser.error(problem)
    if config.https:
        front_parser.error("--front terminates TLS itself: the server behind it speaks HTTP")
    if (config.host, config.port) != (default.host, default.port):
        front_parser.error("with --front, the address is the front's: give --front-port")
    from netem.fronts import serve_until_stopped

    return serve_until_stopped(known.front, known.front_port or 0, config, http3=known.http3)


def _print_summary(tables: Tables) -> None:
    from presentation.markdown import headline

    head = headline(tables.streams, tables.tokens)
    with _pandas_wide():
        print(head.to_string(index=False))


def _pandas_wide() -> Any:
    import pandas as pd

    return pd.option_context(
        "display.width", 200, "display.max_columns", 30, "display.precision", 2
    )


def _workers_arg(value: str) -> int | str:
    """`--workers`: "auto" or a whole number from 1 to 64."""
    if value == "auto":
        return value
    try:
        workers = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {value!r}: a number or auto") from None
    if not 1 <= workers <= 64:
        raise argparse.ArgumentTypeError("--workers must be between 1 and 64")
    return workers


def _add_cluster_flag(p: argparse.ArgumentParser) -> None:
    def address(text: str) -> str:
        try:
            return cluster.parse_address(text)
        except ParamError as exc:
            raise argparse.ArgumentTypeError(exc.message) from None

    p.add_argument(
        "--cluster",
        metavar="tcp://HOST:PORT",
        type=address,
        help="run the client fleets on this Dask scheduler's workers (one share per worker) "
        "instead of local processes; give a --server they can reach",
    )


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="pushlab", description="Measure server-push transports for LLM token streaming."
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("serve", help="run the server (flags: pushlab serve --help)", add_help=False)
    b = sub.add_parser("bench", help="measure one configuration on one or more transports")
    b.add_argument(
        "--transport",
        type=run_spec.argtype("transports"),
        default=tuple(TRANSPORTS),
        metavar="KEYS",
        help=f"'all' or a comma list of: {', '.join(TRANSPORTS)} (default all)",
    )
    b.add_argument(
        "--clients",
        type=int,
        default=1,
        help="concurrent streams per transport (default %(default)s)",
    )
    _add_generation_flags(b)
    _add_client_flags(b)
    b.add_argument(
        "--out", type=Path, help="directory for tables and meta.json (default results/<run-id>)"
    )
    b.add_argument("--no-warmup", action="store_true", help="skip the warm-up stream per transport")
    b.add_argument(
        "--workers",
        type=_workers_arg,
        default="auto",
        metavar="N|auto",
        help="load-generator processes the clients are spread over (default auto: 1 up to "
        "200 clients, else 2)",
    )
    b.add_argument(
        "--uvloop",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="uvloop for the clients and for the server started here (default: on where "
        "uvloop is installed)",
    )
    b.add_argument(
        "--server-gc",
        choices=("auto", "scheduled"),
        help="collector policy of the server started here (default: scheduled above 200 "
        "clients, else auto)",
    )
    b.add_argument("--no-charts", action="store_true", help="write tables and meta only")
    _add_cluster_flag(b)
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    r = sub.add_parser("run", help="run an experiment: tables, charts and report under results/")
    r.add_argument("experiment", choices=list(EXPERIMENTS), help="see pushlab list")
    shared = r.add_argument_group(
        "shared settings (each experiment takes those its spec has; others are refused)"
    )
    for setting in run_spec.SETTINGS:
        shared.add_argument(
            setting.flag,
            dest=setting.field,
            metavar=setting.metavar,
            help=setting.help,
            type=run_spec.argtype(setting.field),
        )
    r.add_argument(
        "--quick", action="store_true", help="a small version of the experiment (seconds)"
    )
    r.add_argument(
        "--set",
        action="append",
        metavar="FIELD=VALUE",
        help="change one field of the experiment's spec, e.g. --set max_n=10000 or "
        "--set rtts_ms=0,50 (repeatable; the fields are the spec in meta.json)",
    )
    r.add_argument("--out", type=Path, help="run directory (default results/<run-id>)")
    _add_cluster_flag(r)
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    rep = sub.add_parser(
        "report", help="run the default suite (or read stored runs) and write report.html"
    )
    rep.add_argument(
        "runs",
        nargs="*",
        type=Path,
        metavar="RUN_DIR",
        help="stored runs or suite folders to report on instead of running the suite",
    )
    rep.add_argument(
        "--only", type=_experiment_list, metavar="NAMES", help="comma list of experiments"
    )
    rep.add_argument(
        "--full", action="store_true", help="each experiment at its default size, not quick"
    )
    rep.add_argument("--out", type=Path, help="report folder (default results/<suite-id>)")
    rep.add_argument("--no-progress", action="store_true", help="no progress bars")
    cmp_ = sub.add_parser("compare", help="what changed between two stored runs or suites")
    cmp_.add_argument("a", type=Path, metavar="RUN_A")
    cmp_.add_argument("b", type=Path, metavar="RUN_B")
    sub.add_parser("list", help="list transports and experiments")
    tok = sub.add_parser("token", help="mint a credential for a server running with --auth")
    tok.add_argument("--secret-file", type=Path, required=True, metavar="PATH",
                     help="the server's key (its --auth-secret-file)")  # fmt: skip
    tok.add_argument("--identity", required=True, help="whose: 1-64 of A-Z a-z 0-9 . _ @ -")
    tok.add_argument("--kind", choices=("key", "session"), default="key",
                     help="key: a bearer token (default); session: a cookie's value")  # fmt: skip
    tok.add_argument("--ttl-s", type=float, default=None, metavar="S",
                     help="seconds it stays valid (default: 30 days; a session 12 h)")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        return cmd_serve(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "bench" and args.clients < 1:
        parser.exit(2, "pushlab bench: error: --clients must be at least 1\n")
    try:
        commands = {"bench": cmd_bench, "run": cmd_run, "list": cmd_list, "report": cmd_report,
                    "compare": cmd_compare, "token": cmd_token}  # fmt: skip
        return commands[args.command](args)
    except ParamError as exc:
        parser.exit(2, f"pushlab {args.command}: error: {exc.message}\n")
    except ClusterError as exc:  # unreachable: 1; a cluster that cannot reach the target: 2
        code = 1 if isinstance(exc, ClusterUnavailable) else 2
        parser.exit(code, f"pushlab {args.command}: error: {exc.message}\n")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
