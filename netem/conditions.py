"""Network conditions for the fault proxy: the spec, its string form, and its timing rules.

Sans-I/O: nothing here imports asyncio. `ReleaseSchedule`, `TokenBucket` and `Shaper` take
times as arguments, so the proxy's timing decisions can be tested with a fake clock.

String form (`parse_net` / `format_net`)
----------------------------------------
Comma-separated `key=value` items. `up.key=value` or `down.key=value` applies a key to one
direction (up = client -> server, down = server -> client); without a prefix a key applies to
the directions in the last column:

    key          value                     Conditions field                 no prefix means
    delay        time                      delay_ms                         both
    jitter       time                      jitter_ms                        both
    bandwidth    rate                      bandwidth_bps                    both
    cut_after    size or time (by unit)    cut_after_bytes or cut_after_s   down
    cut_mode     rst | fin                 cut_mode                         both
    stall_after  size                      stall_after_bytes                down
    stall        time                      stall_s                          both
    slice        size                      slice_bytes                      both
    buffer       down | up | both | none   buffer_all                       (no prefix allowed)
    seed         integer                   NetSpec.seed                     (no prefix allowed)

So `delay=50ms` adds 50 ms each way (100 ms to a round trip). A prefixed item overrides the
unprefixed one whatever their order; the same item twice is an error.

Units: time `us`, `ms`, `s` (bare number = ms); size `B`, `kB` = `KB` = 1000, `KiB` = 1024,
`MB` = 10**6, `MiB` = 2**20 (bare number = bytes); rate `bit`, `kbit`, `mbit`, `gbit`, `bps`,
`kbps`, `mbps`, `gbps`, case-insensitive, all in BITS per second (bare number = bit/s). Unlike
tc, `bps` here means bits, not bytes, per second: 1 MB/s is `8mbit`.

Every malformed string raises `NetSpecError` (a `ValueError`) whose one-line message names
the offending item.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

from streams.errors import ParamError

CutMode = Literal["fin", "rst"]
_DIRECTIONS = ("up", "down")


class NetSpecError(ParamError, ValueError):
    """Malformed network conditions; `param` names the key (CLI exit status 2)."""


@dataclass(frozen=True)
class Conditions:
    """What one direction of a proxied connection suffers; the defaults are a clean pipe.

    `jitter_ms` spreads the delay uniformly by ± jitter_ms, but a chunk never leaves before
    the previous one (bytes are never reordered), so a dense stream's latencies skew high.
    `stall_after_bytes` stalls once. `cut_after_*` closes the whole connection (both sides)
    with `cut_mode`: "rst" (SO_LINGER (1, 0) then close) or "fin" (normal close).
    `buffer_all` holds every byte (in memory, unbounded) until the source sends EOF, then
    releases them at once.
    """

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    bandwidth_bps: float | None = None
    cut_after_bytes: int | None = None
    cut_after_s: float | None = None
    cut_mode: CutMode = "fin"
    stall_after_bytes: int | None = None
    stall_s: float = 0.0
    slice_bytes: int | None = None
    buffer_all: bool = False

    def __post_init__(self) -> None:
        for name in ("delay_ms", "jitter_ms", "stall_s", "cut_after_s"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise NetSpecError(f"{name} must be a finite number >= 0, not {value!r}")
        bandwidth = self.bandwidth_bps
        if bandwidth is not None and not (math.isfinite(bandwidth) and bandwidth > 0):
            raise NetSpecError(f"bandwidth_bps must be a finite number > 0, not {bandwidth!r}")
        for name, least in (("cut_after_bytes", 0), ("stall_after_bytes", 0), ("slice_bytes", 1)):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < least):
                raise NetSpecError(f"{name} must be an integer >= {least}, not {value!r}")
        if self.cut_mode not in ("fin", "rst"):
            raise NetSpecError(f"cut_mode must be 'rst' or 'fin', not {self.cut_mode!r}")


@dataclass(frozen=True)
class NetSpec:
    """Conditions for each direction (up = client -> server) and the seed of the jitter."""

    up: Conditions = field(default_factory=Conditions)
    down: Conditions = field(default_factory=Conditions)
    seed: int = 0


# -- parsing --------------------------------------------------------------------------------

_NUMBER = re.compile(
    r"\s*(?P<num>[+-]?(?:\d+(?:\.\d+)?|\.\d+)(?:[eE][+-]?\d{1,3})?)\s*(?P<unit>.*?)\s*"
)
_TIME_US = {"us": 1, "ms": 1000, "s": 1_000_000}
_SIZE_BYTES = {"B": 1, "kB": 1000, "KB": 1000, "KiB": 1024, "MB": 10**6, "MiB": 2**20}
_RATE_BPS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9}
_RATE_BPS |= {"bps": 1, "kbps": 10**3, "mbps": 10**6, "gbps": 10**9}

# key -> (value kind, Conditions field, directions when unprefixed)
_KEYS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "delay": ("time_ms", "delay_ms", _DIRECTIONS),
    "jitter": ("time_ms", "jitter_ms", _DIRECTIONS),
    "bandwidth": ("rate", "bandwidth_bps", _DIRECTIONS),
    "cut_after": ("size_or_time", "cut_after_bytes", ("down",)),
    "cut_mode": ("mode", "cut_mode", _DIRECTIONS),
    "stall_after": ("size", "stall_after_bytes", ("down",)),
    "stall": ("time_s", "stall_s", _DIRECTIONS),
    "slice": ("size", "slice_bytes", _DIRECTIONS),
}
_BUFFER = {"down": ("down",), "up": ("up",), "both": _DIRECTIONS, "none": ()}


def _number(item: str, raw: str) -> tuple[Fraction, str]:
    match = _NUMBER.fullmatch(raw)
    if match is None:
        raise NetSpecError(f"net: {item!r}: expected a number with an optional unit")
    return Fraction(match["num"]), match["unit"]


def _time(item: str, raw: str, target_us: int) -> float:
    number, unit = _number(item, raw)
    if (unit_us := _TIME_US.get(unit or "ms")) is None:
        raise NetSpecError(f"net: {item!r}: unknown time unit {unit!r} (use us, ms, s)")
    return _finite(item, number * unit_us / target_us)


def _size(item: str, raw: str) -> int:
    number, unit = _number(item, raw)
    if (factor := _SIZE_BYTES.get(unit or "B")) is None:
        raise NetSpecError(f"net: {item!r}: unknown size unit {unit!r} (use B, kB, KiB, MB, MiB)")
    size = number * factor
    if size.denominator != 1:
        raise NetSpecError(f"net: {item!r}: not a whole number of bytes")
    return int(size)


def _rate(item: str, raw: str) -> float:
    number, unit = _number(item, raw)
    if (factor := _RATE_BPS.get(unit.lower() or "bit")) is None:
        known = ", ".join(_RATE_BPS)
        raise NetSpecError(f"net: {item!r}: unknown bandwidth unit {unit!r} (use {known})")
    return _finite(item, number * factor)


def _finite(item: str, value: Fraction) -> float:
    try:
        return float(value)
    except OverflowError as exc:
        raise NetSpecError(f"net: {item!r}: number too large") from exc


def _value(kind: str, field_name: str, item: str, raw: str) -> tuple[str, object]:
    """Convert one raw value; return the Conditions field it sets and the value."""
    if kind == "time_ms":
        return field_name, _time(item, raw, 1000)
    if kind == "time_s":
        return field_name, _time(item, raw, 1_000_000)
    if kind == "rate":
        return field_name, _rate(item, raw)
    if kind == "size":
        return field_name, _size(item, raw)
    if kind == "size_or_time":  # cut_after: a time unit means cut_after_s, anything else bytes
        _, unit = _number(item, raw)
        if unit in _TIME_US:
            return "cut_after_s", _time(item, raw, 1_000_000)
        return "cut_after_bytes", _size(item, raw)
    if raw not in ("fin", "rst"):
        raise NetSpecError(f"net: {item!r}: cut_mode is 'rst' or 'fin'")
    return field_name, raw


def parse_net(text: str) -> NetSpec:
    """Parse `delay=50ms,down.bandwidth=1mbit,...` (grammar in the module docstring)."""
    general: dict[str, tuple[object, tuple[str, ...]]] = {}
    specific: dict[tuple[str, str], object] = {}
    seen: set[tuple[str, str]] = set()
    seed = 0
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, raw = (s.strip() for s in item.partition("="))
        if not sep:
            raise NetSpecError(f"net: {item!r} is not key=value", param=key)
        prefix, dot, name = key.rpartition(".")
        if dot and prefix not in _DIRECTIONS:
            raise NetSpecError(f"net: {item!r}: direction prefix is 'up.' or 'down.'", param=key)
        if name in ("buffer", "seed"):
            if dot:
                raise NetSpecError(f"net: {item!r}: {name} takes no direction prefix", param=key)
            if ("", name) in seen:
                raise NetSpecError(f"net: {item!r}: {name} given twice", param=key)
            seen.add(("", name))
            if name == "seed":
                if not re.fullmatch(r"[+-]?\d+", raw):
                    raise NetSpecError(f"net: {item!r}: seed is an integer", param=key)
                seed = int(raw)
            elif (directions := _BUFFER.get(raw)) is None:
                raise NetSpecError(f"net: {item!r}: buffer is down, up, both or none", param=key)
            else:
                general["buffer_all"] = (True, directions)
            continue
        if name not in _KEYS:
            known = ", ".join([*_KEYS, "buffer", "seed"])
            raise NetSpecError(f"net: unknown key {name!r} in {item!r} (known: {known})", param=key)
        kind, field_name, default_directions = _KEYS[name]
        field_name, value = _value(kind, field_name, item, raw)
        try:
            Conditions(**{field_name: value})  # type: ignore[arg-type]
        except NetSpecError as exc:
            raise NetSpecError(f"net: {item!r}: {exc}", param=key) from exc
        if (prefix, field_name) in seen:
            raise NetSpecError(f"net: {item!r}: {key} given twice", param=key)
        seen.add((prefix, field_name))
        if dot:
            specific[(prefix, field_name)] = value
        else:
            general[field_name] = (value, default_directions)
    up, down = (_conditions(d, general, specific) for d in _DIRECTIONS)
    return NetSpec(up=up, down=down, seed=seed)


def _conditions(
    direction: str,
    general: dict[str, tuple[object, tuple[str, ...]]],
    specific: dict[tuple[str, str], object],
) -> Conditions:
    kwargs = {name: value for name, (value, dirs) in general.items() if direction in dirs}
    kwargs |= {name: value for (d, name), value in specific.items() if d == direction}
    return Conditions(**kwargs)  # type: ignore[arg-type]


# -- formatting -----------------------------------------------------------------------------


def _num(value: float) -> str:
    if float(value).is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(float(value))


def _format_size(size: int) -> str:
    for unit in ("MB", "MiB", "kB", "KiB"):
        factor = _SIZE_BYTES[unit]
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def _format_rate(bps: float) -> str:
    for unit in ("gbit", "mbit", "kbit"):
        factor = _RATE_BPS[unit]
        if (bps / factor).is_integer() and (bps / factor) * factor == bps:
            return f"{_num(bps / factor)}{unit}"
    return f"{_num(bps)}bit"


def _format_value(field_name: str, value: object) -> str:
    if field_name in ("delay_ms", "jitter_ms"):
        return f"{_num(value)}ms"  # type: ignore[arg-type]
    if field_name in ("stall_s", "cut_after_s"):
        return f"{_num(value)}s"  # type: ignore[arg-type]
    if field_name == "bandwidth_bps":
        return _format_rate(value)  # type: ignore[arg-type]
    if field_name.endswith("_bytes"):
        return _format_size(value)  # type: ignore[arg-type]
    return str(value)


def format_net(spec: NetSpec) -> str:
    """The string form of `spec`: `parse_net(format_net(spec)) == spec`."""
    default = Conditions()
    fields_ = [(key, f, dirs) for key, (_, f, dirs) in _KEYS.items()]
    fields_.insert(4, ("cut_after", "cut_after_s", ("down",)))
    parts: list[str] = []
    for key, name, default_directions in fields_:
        up, down, unset = (getattr(c, name) for c in (spec.up, spec.down, default))
        if default_directions == _DIRECTIONS and up == down:
            if up != unset:
                parts.append(f"{key}={_format_value(name, up)}")
            continue
        for direction, value in (("up", up), ("down", down)):
            if value != unset:
                prefix = "" if default_directions == (direction,) else f"{direction}."
                parts.append(f"{prefix}{key}={_format_value(name, value)}")
    buffered = tuple(d for d in _DIRECTIONS if getattr(spec, d).buffer_all)
    if buffered:
        parts.append("buffer=" + ("both" if len(buffered) == 2 else buffered[0]))
    if spec.seed:
        parts.append(f"seed={spec.seed}")
    return ",".join(parts)


# -- timing rules ---------------------------------------------------------------------------


class ReleaseSchedule:
    """When each chunk of one direction may leave: read time + delay ± jitter, in order."""

    def __init__(self, conditions: Conditions, rng: random.Random) -> None:
        self._delay_s = conditions.delay_ms / 1000
        self._jitter_s = conditions.jitter_ms / 1000
        self._rng = rng
        self._last_s = -math.inf

    def release_at(self, read_at_s: float) -> float:
        """Release time of a chunk read at `read_at_s`: never before it, nor the previous one."""
        offset_s = self._delay_s
        if self._jitter_s:
            offset_s += self._rng.uniform(-self._jitter_s, self._jitter_s)
        self._last_s = max(read_at_s + offset_s, read_at_s, self._last_s)
        return self._last_s


class TokenBucket:
    """Byte pacing at `rate_bps` bits/s, starting empty; idle time banks up to `capacity_bytes`.

    A piece must be at most `capacity_bytes`; `take` lets the bucket go into debt and returns
    how long to wait before the piece may be written, so the long-run rate never exceeds it.
    """

    def __init__(self, rate_bps: float, now_s: float, burst_s: float = 0.01) -> None:
        self.rate_bytes_per_s = rate_bps / 8
        self.capacity_bytes = int(min(64 * 1024, max(256, self.rate_bytes_per_s * burst_s)))
        self._tokens = 0.0
        self._last_s = now_s

    def take(self, size_bytes: int, now_s: float) -> float:
        """Spend `size_bytes` tokens at `now_s`; return the seconds to wait before sending."""
        elapsed_s = max(0.0, now_s - self._last_s)
        self._tokens = min(self.capacity_bytes, self._tokens + elapsed_s * self.rate_bytes_per_s)
        self._last_s = now_s
        self._tokens -= size_bytes
        return max(0.0, -self._tokens / self.rate_bytes_per_s)


class Shaper:
    """The byte-count rules of one direction (stall, cut, slice, bandwidth) as decisions.

    Before each write, `next_piece` says how many of the available bytes it may carry and how
    long to wait first; after it, `wrote` accounts the bytes and says whether to cut now.
    Call `wrote(0, now_s)` once at the start: a zero `cut_after_bytes` cuts before any byte.
    """

    def __init__(self, conditions: Conditions, now_s: float) -> None:
        self._cond = conditions
        self.sent_bytes = 0
        rate_bps = conditions.bandwidth_bps
        self._bucket = None if rate_bps is None else TokenBucket(rate_bps, now_s)
        self._stall_pending = conditions.stall_after_bytes is not None
        self._stall_until_s = -math.inf

    def next_piece(self, available_bytes: int, now_s: float) -> tuple[int, float]:
        """(bytes the next write may carry, seconds to wait before writing them)."""
        cond, size = self._cond, available_bytes
        if cond.cut_after_bytes is not None:
            size = min(size, cond.cut_after_bytes - self.sent_bytes)
        if self._stall_pending and cond.stall_after_bytes is not None:
            size = min(size, cond.stall_after_bytes - self.sent_bytes)
        if cond.slice_bytes is not None:
            size = min(size, cond.slice_bytes)
        start_s = max(now_s, self._stall_until_s)
        if self._bucket is not None:
            size = min(size, self._bucket.capacity_bytes)
            start_s += self._bucket.take(size, start_s)
        return size, start_s - now_s

    def wrote(self, size_bytes: int, now_s: float) -> bool:
        """Account `size_bytes` written at `now_s`; True when the connection must be cut now."""
        self.sent_bytes += size_bytes
        cond = self._cond
        if self._stall_pending and self.sent_bytes >= (cond.stall_after_bytes or 0):
            self._stall_pending = False  # stall once, starting now
            self._stall_until_s = now_s + cond.stall_s
        return cond.cut_after_bytes is not None and self.sent_bytes >= cond.cut_after_bytes
