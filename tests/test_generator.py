"""The seeded token generator and its corpora: determinism, schedule shape, corpus contents."""

from __future__ import annotations

import dataclasses
import itertools
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.corpus import CORPORA, tokens_of
from streams.errors import ParamError
from streams.generator import Plan, offsets_ns, plan, texts
from streams.params import CORPORA as PARAM_CORPORA
from streams.params import ENVELOPES, GenParams

ROUNDING_NS = 2  # offsets are rounded to whole ns, so a gap may be off by a little


def gaps_ns(offsets: list[int]) -> list[int]:
    return [b - a for a, b in itertools.pairwise(offsets)]


# --- determinism ---------------------------------------------------------------------------


@pytest.mark.parametrize("corpus", PARAM_CORPORA)
def test_same_params_give_the_same_plan(corpus: str) -> None:
    params = GenParams(tokens=500, rate=50.0, jitter=0.4, seed=7, text=corpus)
    assert plan(params) == plan(dataclasses.replace(params))


def test_different_seeds_give_different_texts() -> None:
    first = texts(GenParams(tokens=50, seed=1))
    assert texts(GenParams(tokens=50, seed=2)) != first
    distinct = {tuple(texts(GenParams(tokens=50, seed=seed))) for seed in range(20)}
    assert len(distinct) >= 18


def test_different_seeds_give_different_jittered_schedules() -> None:
    params = GenParams(tokens=50, jitter=0.5, seed=1)
    assert offsets_ns(params) != offsets_ns(dataclasses.replace(params, seed=2))


def test_texts_length_equals_tokens_even_beyond_one_corpus_length() -> None:
    for count in (1, 2, 17, len(CORPORA["en"]), 3 * len(CORPORA["en"]) + 5):
        assert len(texts(GenParams(tokens=count, seed=3))) == count


def test_texts_walk_the_corpus_sequentially_and_wrap() -> None:
    corpus = tokens_of("zh")
    out = texts(GenParams(tokens=2 * len(corpus) + 10, seed=11, text="zh"))
    start = corpus.index(out[0])
    while corpus[start:] + corpus[:start] != tuple(out[: len(corpus)]):
        start = corpus.index(out[0], start + 1)
    assert out == [corpus[(start + k) % len(corpus)] for k in range(len(out))]


def test_texts_start_at_a_word_not_inside_one() -> None:
    for seed in range(50):
        first = texts(GenParams(tokens=1, seed=seed))[0]
        assert first[0] == " " or first[0].isupper(), first


def test_shorter_streams_are_prefixes_of_longer_ones() -> None:
    short = GenParams(tokens=100, jitter=0.3, seed=5, text="mixed")
    long = dataclasses.replace(short, tokens=1000)
    assert texts(long)[:100] == texts(short)
    assert offsets_ns(long)[:100] == offsets_ns(short)


# --- schedule ------------------------------------------------------------------------------


def test_first_offset_is_ttft() -> None:
    assert offsets_ns(GenParams(tokens=5, ttft_ms=123.456, jitter=0.7))[0] == 123_456_000
    assert offsets_ns(GenParams(tokens=1, ttft_ms=0.0))[0] == 0


@pytest.mark.parametrize("rate", [0.1, 3.0, 20.0, 1000.0, 100_000.0])
def test_jitter_zero_is_an_exact_metronome(rate: float) -> None:
    params = GenParams(tokens=1000, rate=rate, ttft_ms=250.0, jitter=0.0, seed=9)
    base_ns = 1e9 / rate
    assert offsets_ns(params) == [round(250e6 + base_ns * i) for i in range(1000)]
    assert max(gaps_ns(offsets_ns(params))) - min(gaps_ns(offsets_ns(params))) <= 1


@pytest.mark.parametrize("jitter", [0.1, 0.5, 1.0])
def test_mean_gap_is_one_over_rate(jitter: float) -> None:
    params = GenParams(tokens=10_000, rate=40.0, jitter=jitter, seed=42)
    mean_gap_ns = statistics.fmean(gaps_ns(offsets_ns(params)))
    # u has standard deviation 1/sqrt(3); the mean of 9999 gaps is within 4 sigma.
    sigma_ns = 1e9 / 40.0 * jitter / 3**0.5 / 9999**0.5
    assert abs(mean_gap_ns - 1e9 / 40.0) < 4 * sigma_ns


@pytest.mark.parametrize("jitter", [0.05, 0.5, 1.0])
def test_every_gap_stays_within_the_jitter_band(jitter: float) -> None:
    params = GenParams(tokens=10_000, rate=7.0, jitter=jitter, seed=3)
    base_ns = 1e9 / 7.0
    gaps = gaps_ns(offsets_ns(params))
    assert min(gaps) >= (1 - jitter) * base_ns - ROUNDING_NS
    assert max(gaps) <= (1 + jitter) * base_ns + ROUNDING_NS
    assert statistics.pstdev(gaps) > 0.4 * jitter * base_ns  # the band is actually used


def test_schedule_does_not_depend_on_corpus_or_envelope() -> None:
    params = GenParams(tokens=300, rate=25.0, ttft_ms=80.0, jitter=0.6, seed=99)
    reference = offsets_ns(params)
    for corpus in PARAM_CORPORA:
        for envelope in ENVELOPES:
            other = dataclasses.replace(params, text=corpus, envelope=envelope)
            assert offsets_ns(other) == reference


def test_plan_combines_texts_and_offsets() -> None:
    params = GenParams(tokens=64, jitter=0.2, seed=4, text="zh")
    result = plan(params)
    assert result == Plan(tuple(texts(params)), tuple(offsets_ns(params)))
    with pytest.raises(ValueError):
        Plan(("a",), ())


def test_plan_for_the_largest_stream() -> None:
    params = GenParams(tokens=100_000, rate=1000.0, jitter=0.5, seed=1, text="mixed")
    result = plan(params)
    assert len(result.texts) == len(result.offsets_ns) == 100_000


valid_params = st.builds(
    GenParams,
    tokens=st.integers(1, 300),
    rate=st.floats(0.1, 100_000.0),
    ttft_ms=st.floats(0.0, 60_000.0),
    jitter=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**63 - 1),
    text=st.sampled_from(PARAM_CORPORA),
    envelope=st.sampled_from(ENVELOPES),
)


@settings(max_examples=200, deadline=None)
@given(valid_params)
def test_invariants_hold_for_any_valid_params(params: GenParams) -> None:
    result = plan(params)
    assert len(result.texts) == len(result.offsets_ns) == params.tokens
    assert all(isinstance(t, str) and t for t in result.texts)
    assert all(isinstance(o, int) for o in result.offsets_ns)
    assert result.offsets_ns[0] == round(params.ttft_ms * 1e6)
    base_ns = 1e9 / params.rate
    # Rounding error grows with the size of the offsets (floats keep 53 bits).
    slack_ns = ROUNDING_NS + result.offsets_ns[-1] * 1e-13
    low_ns = (1 - params.jitter) * base_ns - slack_ns
    high_ns = (1 + params.jitter) * base_ns + slack_ns
    for gap in gaps_ns(list(result.offsets_ns)):
        assert gap >= 0
        assert low_ns <= gap <= high_ns
    assert plan(params) == result


# --- corpora -------------------------------------------------------------------------------


def test_corpora_match_the_parameter_choices() -> None:
    assert set(CORPORA) == set(PARAM_CORPORA)
    for name in PARAM_CORPORA:
        assert tokens_of(name) is CORPORA[name]
    with pytest.raises(ParamError):
        tokens_of("klingon")


@pytest.mark.parametrize("name", PARAM_CORPORA)
def test_every_corpus_token_is_a_non_empty_string(name: str) -> None:
    assert len(tokens_of(name)) > 500
    assert all(isinstance(t, str) and t for t in tokens_of(name))


@pytest.mark.parametrize("name", PARAM_CORPORA)
def test_corpus_has_paragraph_breaks_and_separate_punctuation(name: str) -> None:
    tokens = tokens_of(name)
    assert tokens.count("\n\n") >= 5
    assert tokens[-1] == "\n\n"  # wrapping around starts a new paragraph
    assert ("," in tokens or "，" in tokens) and ("." in tokens or "。" in tokens)


def test_english_reads_like_words() -> None:
    tokens = tokens_of("en")
    text = "".join(tokens)
    assert len(text.split()) >= 600
    assert " streaming" in tokens or " stream" in tokens
    assert sum(t.startswith(" ") for t in tokens) > len(tokens) / 2
    assert all(len(t.strip()) <= 14 for t in tokens)  # word-ish pieces, not sentences
    split_words = sum(t.isalpha() and t.islower() and not t.startswith(" ") for t in tokens)
    assert split_words >= 20  # some words come as two sub-word pieces


def test_chinese_tokens_are_multi_byte_utf8() -> None:
    tokens = tokens_of("zh")
    assert len("".join(tokens)) >= 800
    multi_byte = [t for t in tokens if len(t.encode()) > len(t)]
    assert len(multi_byte) > 0.8 * len(tokens)
    cjk = [t for t in tokens if "\u4e00" <= t[0] <= "\u9fff"]
    assert {len(t) for t in cjk} == {1, 2, 3}
    assert all(3 <= len(t.encode()) <= 9 for t in cjk)
    assert "，" in tokens and "。" in tokens


def test_mixed_has_english_chinese_emoji_and_accents() -> None:
    tokens = tokens_of("mixed")
    text = "".join(tokens)
    assert any(len(ch.encode()) == 4 for ch in text)  # emoji outside the BMP
    assert any(any(len(ch.encode()) == 4 for ch in t) for t in tokens)
    assert any(ch in text for ch in "éüï")
    assert " the" in tokens and "。" in tokens


@pytest.mark.parametrize("name", PARAM_CORPORA)
def test_tokens_never_split_a_character_or_a_surrogate(name: str) -> None:
    for token in tokens_of(name):
        assert token.encode("utf-8").decode("utf-8") == token
