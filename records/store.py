"""The result store: one directory per run holding both tables (CSV and Parquet) and meta.json.

Layout of a run directory (see results/README.md):

    tokens.csv  tokens.parquet  streams.csv  streams.parquet  meta.json  [*.png  report.md]
    [<extra>.csv  <extra>.parquet  <kept text files, e.g. nginx-<mode>.conf>]

Parquet is what `load` reads (exact dtypes, and the schema version in its key-value
metadata); the CSV copies are for people and spreadsheets, and the fallback when a Parquet file
is absent. A CSV cannot tell a missing string from an empty one: both load as "".
A run stored under an older schema is read as the current one (`upgrade`: renamed columns
take their new names, new columns their value for the old runs).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from records.schema import (
    ADDED_IN_5,
    RENAMED_IN_4,
    SCHEMA_VERSION,
    STREAM_COLUMNS,
    TOKEN_COLUMNS,
    Tables,
    conform,
)
from streams.errors import ParamError

if TYPE_CHECKING:
    import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_ENV = "PUSHLAB_RESULTS"
META_FILE = "meta.json"
TABLES: dict[str, dict[str, str]] = {"tokens": TOKEN_COLUMNS, "streams": STREAM_COLUMNS}
_PARQUET_KEY = b"pushlab.schema_version"


@dataclasses.dataclass(frozen=True)
class StoredRun:
    """A run read back from disk: both tables conformed to the schema, its metadata and path."""

    tokens: pd.DataFrame
    streams: pd.DataFrame
    meta: dict[str, Any]
    path: Path
    extra: dict[str, pd.DataFrame] = dataclasses.field(default_factory=dict)
    files: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> text (Tables.files)


def results_root() -> Path:
    """Where runs are stored: `$PUSHLAB_RESULTS` if set, else `<repo>/results`."""
    override = os.environ.get(RESULTS_ENV)
    return Path(override).expanduser() if override else REPO_ROOT / "results"


def save(tables: Tables, meta: dict[str, Any], out_dir: Path) -> Path:
    """Write both tables (CSV + Parquet, conformed first), the extra tables, the kept text
    files and meta.json (listing them all) into `out_dir`."""
    for name in tables.files:
        _check_file_name(name)  # before anything is written
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[dict[str, Any]] = []
    for name, columns in TABLES.items():
        df = conform(getattr(tables, name), columns)
        csv_path, parquet_path = out_dir / f"{name}.csv", out_dir / f"{name}.parquet"
        df.to_csv(csv_path, index=False)
        _write_parquet(df, parquet_path)
        for path, fmt in ((csv_path, "csv"), (parquet_path, "parquet")):
            files.append({"name": path.name, "table": name, "format": fmt, "rows": len(df)})
    for name, df in tables.extra.items():
        if name in TABLES or not name.isidentifier():
            raise ValueError(f"extra table name {name!r} is reserved or not a plain name")
        df.to_csv(out_dir / f"{name}.csv", index=False)
        _write_parquet(df, out_dir / f"{name}.parquet")
        files.append(
            {"name": f"{name}.parquet", "table": name, "format": "parquet", "rows": len(df)}
        )
    for name, text in tables.files.items():
        (out_dir / name).write_text(text, encoding="utf-8")
        files.append({"name": name, "table": "", "format": "text", "chars": len(text)})
    full_meta = {**meta, "files": files}
    full_meta.setdefault("schema_version", SCHEMA_VERSION)
    text = json.dumps(full_meta, indent=2, default=str)
    (out_dir / META_FILE).write_text(text + "\n", encoding="utf-8")
    return out_dir


def load(run_dir: Path) -> StoredRun:
    """Read a run directory back; a missing file or a too-new schema is a ValueError naming it."""
    run_dir = Path(run_dir)
    meta = _read_meta(run_dir / META_FILE)
    version = int(meta["schema_version"])
    frames = {
        name: _read_table(run_dir, name, columns, version) for name, columns in TABLES.items()
    }
    extra = {f["table"]: _read_extra(run_dir / f["name"]) for f in meta.get("files", [])
             if f["table"] not in TABLES and f["format"] == "parquet"}  # fmt: skip
    texts = {f["name"]: _read_text(run_dir / f["name"]) for f in meta.get("files", [])
             if f["format"] == "text"}  # fmt: skip
    return StoredRun(frames["tokens"], frames["streams"], meta, run_dir, extra, texts)


# names `save` writes itself; a kept text file may take none of them
_RESERVED_FILES = {META_FILE, *(f"{t}.{x}" for t in TABLES for x in ("csv", "parquet"))}


def _check_file_name(name: str) -> None:
    """A kept text file is a plain name inside the run folder, never one of the run's own."""
    if Path(name).name != name or name.startswith(".") or name in _RESERVED_FILES:
        raise ValueError(f"text file name {name!r} is reserved or not a plain file name")
    if name.endswith((".csv", ".parquet", ".png")):
        raise ValueError(f"text file name {name!r} would collide with a table or a chart")


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise ValueError(f"{path}: missing, though meta.json lists it")
    return path.read_text(encoding="utf-8")


def _read_extra(path: Path) -> pd.DataFrame:
    import pyarrow.parquet as pq

    if not path.is_file():
        raise ValueError(f"{path}: missing, though meta.json lists it")
    return pq.read_table(path).to_pandas()


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    metadata = {**(table.schema.metadata or {}), _PARQUET_KEY: str(SCHEMA_VERSION).encode()}
    pq.write_table(table.replace_schema_metadata(metadata), path)


def _read_meta(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"{path}: missing; not a pushlab run directory?")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable metadata: {exc}") from exc
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object")
    _check_version(path, meta.get("schema_version"))
    return meta


def _check_version(path: Path, version: object) -> None:
    if not isinstance(version, int):
        raise ValueError(f"{path}: no integer schema_version (found {version!r})")
    if version > SCHEMA_VERSION:
        raise ValueError(
            f"{path}: schema_version {version} is newer than this code's {SCHEMA_VERSION}; "
            "update pushlab to read it"
        )


def upgrade(df: pd.DataFrame, table: str, version: int) -> pd.DataFrame:
    """`table` as stored under schema `version`, with the columns the current schema names."""
    if table == "streams" and version < 4:
        df = df.rename(columns=RENAMED_IN_4)
        if "stack" not in df.columns:
            df["stack"] = "tcp"  # every connection before version 4 was a TCP one
    if table == "streams" and version < 5:
        # before 5 every stream was HTTP/1.1 (or a WebSocket upgraded from it) in clear text
        for column, value in ADDED_IN_5.items():
            if column not in df.columns:
                df[column] = value
    return df


def _read_table(run_dir: Path, name: str, columns: dict[str, str], version: int) -> pd.DataFrame:
    import pandas as pd

    parquet_path, csv_path = run_dir / f"{name}.parquet", run_dir / f"{name}.csv"
    if parquet_path.is_file():
        import pyarrow.parquet as pq

        table = pq.read_table(parquet_path)
        stored = (table.schema.metadata or {}).get(_PARQUET_KEY)
        if stored is not None:
            _check_version(parquet_path, int(stored))
            version = int(stored)
        df, path = table.to_pandas(), parquet_path
    elif csv_path.is_file():
        strings = [c for c, t in columns.items() if t == "string"]
        df = pd.read_csv(
            csv_path,
            dtype={c: "string" for c in strings},
            keep_default_na=False,
            na_values={c: ["", "NaN", "nan"] for c in columns if c not in strings},
        )
        path = csv_path
    else:
        raise ValueError(f"{parquet_path}: missing (and no {csv_path.name} to fall back on)")
    try:
        return conform(upgrade(df, name, version), columns)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: does not match the {name} schema: {exc}") from exc


def expand(paths: list[Path]) -> list[Path]:
    """Run folders: each path itself if it holds meta.json, else its children that do."""
    out = []
    for path in paths:
        if (path / "meta.json").is_file():
            out.append(path)
        else:
            found = sorted(p.parent for p in path.glob("*/meta.json"))
            if not found:
                raise ParamError(f"{path}: neither a stored run nor a suite of them", param="run")
            out += found
    return out


def load_runs(paths: list[Path]) -> list[Any]:
    """The stored runs under `paths`; a folder that is not one is a ParamError (CLI: exit 2)."""
    try:
        return [load(d) for d in expand(paths)]
    except ValueError as exc:  # missing file, other schema, unreadable meta: say which
        raise ParamError(str(exc), param="run") from None
