"""The seeded token source every transport streams: what each token says and when it is due.

Model: an LLM answer has a prefill phase, during which the model reads the prompt and emits
nothing, then a decode phase emitting one token per step. So token 0 is due `ttft_ms` after the
stream starts, and each following token `1e9 / rate` ns after the previous one, times a factor
`1 + jitter * u` with `u` uniform in [-1, 1]: the mean gap stays `1 / rate` s, `jitter` is the
relative spread of the gaps, and `jitter == 0` is an exact metronome.

Texts and schedule come from two independent RNGs derived from `seed`, so the schedule does
not depend on the corpus (`text`) and neither depends on the `envelope` or on the transport:
the same parameters give the same plan everywhere.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from streams.corpus import CORPORA, tokens_of
from streams.params import GenParams


def _is_word_start(token: str, previous: str) -> bool:
    return token != "\n\n" and (
        token[0] == " " or previous == "\n\n" or "\u3400" <= token[0] <= "\u9fff"
    )


# Per corpus, the token indices where a reading may start: never inside a word or at punctuation.
_STARTS: dict[str, tuple[int, ...]] = {
    name: tuple(i for i, t in enumerate(tokens) if _is_word_start(t, tokens[i - 1]))
    for name, tokens in CORPORA.items()
}


def texts(params: GenParams) -> list[str]:
    """`params.tokens` token texts: corpus `params.text` read from a seeded start, wrapping,
    skipping the first `params.offset` (a continuation goes on where the last part stopped)."""
    corpus = tokens_of(params.text)
    start = (random.Random(params.seed).choice(_STARTS[params.text]) + params.offset) % len(corpus)
    rotated = corpus[start:] + corpus[:start]
    whole, rest = divmod(params.tokens, len(rotated))
    return list(rotated * whole + rotated[:rest])


def offsets_ns(params: GenParams) -> list[int]:
    """When each token is due, in ns after the stream starts: integers, non-decreasing."""
    first_ns = params.ttft_ms * 1e6
    gap_ns = 1e9 / params.rate
    count = params.tokens
    if params.jitter == 0:
        return [round(first_ns + gap_ns * i) for i in range(count)]
    draw = random.Random(f"{params.seed}-gaps").random
    spread = params.jitter
    factors = (1.0 + spread * (2.0 * draw() - 1.0) for _ in range(count - 1))
    steps = itertools.accumulate(factors, initial=0.0)  # sum of gap factors up to each token
    return [round(first_ns + gap_ns * s) for s in steps]


@dataclass(frozen=True, slots=True)
class Plan:
    """One stream's tokens: `texts[i]` is due `offsets_ns[i]` ns after the stream starts."""

    texts: tuple[str, ...]
    offsets_ns: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.offsets_ns):
            raise ValueError("a plan needs exactly one offset per token")


def plan(params: GenParams) -> Plan:
    """The texts and schedule of the stream `params` describes, identical for every transport."""
    return Plan(texts=tuple(texts(params)), offsets_ns=tuple(offsets_ns(params)))
