"""Usage normalisation per provider shape, and exact costs computed by hand (in the comments)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from metering.money import format_usd, usd_to_nanos
from metering.prices import Price, lookup
from metering.usage import Usage, cost_nanos, estimate_usage, normalize_usage, worst_case_nanos
from text import tokens
from text.tokens import count_messages, count_text, encoding_for

# Claude 3.5 Sonnet list prices ($/1M): input 3, output 15, cache read 0.30, cache write 3.75.
SONNET = Price.per_million(Decimal(3), Decimal(15), Decimal("0.30"), Decimal("3.75"))
# The same request (50 fresh, 10 000 cache-read, 2 000 cache-write input tokens, 300 output) in every shape.
# 50*3e-6 + 10000*3e-7 + 2000*3.75e-6 + 300*1.5e-5 = 0.00015 + 0.003 + 0.0075 + 0.0045 = 0.01515 USD.
SONNET_COST = 15_150_000
SONNET_USAGE = Usage(prompt_tokens=12_050, completion_tokens=300, cached_tokens=10_000, cache_write_tokens=2_000)

ANTHROPIC_SHAPES = {
    "anthropic-native": ("anthropic", {"input_tokens": 50, "output_tokens": 300, "cache_read_input_tokens": 10_000,
                                       "cache_creation_input_tokens": 2_000}),
    "vertex-anthropic-native": ("vertex_ai", {"input_tokens": 50, "output_tokens": 300,
                                              "cache_read_input_tokens": 10_000,
                                              "cache_creation_input_tokens": 2_000}),
    "bedrock-converse": ("bedrock", {"inputTokens": 50, "outputTokens": 300, "totalTokens": 12_350,
                                     "cacheReadInputTokens": 10_000, "cacheWriteInputTokens": 2_000}),
    # litellm's ModelResponse.usage for any of the above: prompt_tokens already includes both cache classes, which
    # are repeated in prompt_tokens_details AND at top level. Adding either again is the incumbent's double count.
    "litellm-openai-format": ("anthropic", {
        "prompt_tokens": 12_050, "completion_tokens": 300, "total_tokens": 12_350,
        "prompt_tokens_details": {"cached_tokens": 10_000, "cache_creation_tokens": 2_000,
                                  "cache_write_tokens": 2_000, "text_tokens": 50},
        "cache_creation_input_tokens": 2_000, "cache_read_input_tokens": 10_000,
        "completion_tokens_details": {"reasoning_tokens": 0, "text_tokens": 300},
    }),
}


@pytest.mark.parametrize("name", sorted(ANTHROPIC_SHAPES))
def test_anthropic_family_shapes_cost_the_same(name: str) -> None:
    provider, raw = ANTHROPIC_SHAPES[name]
    usage = normalize_usage(raw, provider)
    assert usage == SONNET_USAGE
    assert cost_nanos(usage, SONNET) == SONNET_COST


def test_hour_long_cache_writes_cost_their_own_price() -> None:
    """Anthropic bills a write kept an hour (cache_control ttl 1h) at 2x input, a 5-minute one at 1.25x: of 2,000
    written tokens, 500 for an hour add 500 * (6e-6 - 3.75e-6) = $0.001125 to the 5-minute bill."""
    raw = {**ANTHROPIC_SHAPES["anthropic-native"][1],
           "cache_creation": {"ephemeral_5m_input_tokens": 1_500, "ephemeral_1h_input_tokens": 500}}
    usage = normalize_usage(raw, "anthropic")
    assert (usage.cache_write_tokens, usage.cache_write_1h_tokens) == (2_000, 500)
    sonnet = Price.per_million(Decimal(3), Decimal(15), Decimal("0.30"), Decimal("3.75"), Decimal(6))
    assert cost_nanos(usage, sonnet) == SONNET_COST + 1_125_000
    table = lookup("anthropic/claude-sonnet-4-5-20250929")
    assert table is not None and table.price.cache_write_1h == Decimal("0.000006")
    assert cost_nanos(usage, table.price) == cost_nanos(usage, sonnet)
    assert cost_nanos(usage, SONNET) == SONNET_COST  # no 1-hour price given: the 5-minute one


def test_table_price_for_bedrock_sonnet_matches_hand_price() -> None:
    facts = lookup("bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0")
    assert facts is not None
    assert cost_nanos(SONNET_USAGE, facts.price) == SONNET_COST


def test_openai_cached_tokens_are_inside_prompt_tokens() -> None:
    # gpt-4o: 600 fresh * 2.5e-6 + 400 cached * 1.25e-6 + 200 out * 1e-5 = 0.0015 + 0.0005 + 0.002 = 0.004 USD
    raw = {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200,
           "prompt_tokens_details": {"cached_tokens": 400, "audio_tokens": 0}}
    usage = normalize_usage(raw, "openai")
    assert usage == Usage(prompt_tokens=1000, completion_tokens=200, cached_tokens=400)
    facts = lookup("gpt-4o")
    assert facts is not None
    assert cost_nanos(usage, facts.price) == 4_000_000


def test_azure_reasoning_tokens_billed_as_output() -> None:
    # o3-mini ($1.10 / $4.40, cached $0.55): 976*1.1e-6 + 1024*5.5e-7 + 1500*4.4e-6
    # = 0.0010736 + 0.0005632 + 0.0066 = 0.0082368 USD (the 1200 reasoning tokens are inside the 1500).
    raw = {"prompt_tokens": 2000, "completion_tokens": 1500,
           "prompt_tokens_details": {"cached_tokens": 1024},
           "completion_tokens_details": {"reasoning_tokens": 1200}}
    usage = normalize_usage(raw, "azure")
    assert (usage.reasoning_tokens, usage.completion_tokens) == (1200, 1500)
    facts = lookup("azure/o3-mini") or lookup("o3-mini")
    assert facts is not None
    assert cost_nanos(usage, facts.price) == 8_236_800


GEMINI = Price.per_million(Decimal("0.30"), Decimal("2.50"), Decimal("0.03"))
# 1000 fresh * 3e-7 + 4000 cached * 3e-8 + (200 + 800 thoughts) * 2.5e-6 = 0.0003 + 0.00012 + 0.0025 = 0.00292 USD


@pytest.mark.parametrize("provider,raw", [
    ("gemini", {"promptTokenCount": 5000, "cachedContentTokenCount": 4000, "candidatesTokenCount": 200,
                "thoughtsTokenCount": 800, "totalTokenCount": 6000}),
    ("vertex_ai", {"usageMetadata": {"promptTokenCount": 5000, "cachedContentTokenCount": 4000,
                                     "candidatesTokenCount": 200, "thoughtsTokenCount": 800}}),
    ("gemini", {"prompt_tokens": 5000, "completion_tokens": 1000, "total_tokens": 6000,
                "prompt_tokens_details": {"cached_tokens": 4000, "text_tokens": 1000},
                "completion_tokens_details": {"reasoning_tokens": 800}, "cache_read_input_tokens": 4000}),
])
def test_gemini_shapes(provider: str, raw: dict) -> None:
    usage = normalize_usage(raw, provider)
    assert usage == Usage(prompt_tokens=5000, completion_tokens=1000, cached_tokens=4000, reasoning_tokens=800)
    assert cost_nanos(usage, GEMINI) == 2_920_000
    assert cost_nanos(usage, lookup("gemini/gemini-2.5-flash").price) == 2_920_000  # type: ignore[union-attr]


def test_openai_responses_input_tokens_include_cached() -> None:
    raw = {"input_tokens": 1000, "output_tokens": 200, "input_tokens_details": {"cached_tokens": 400},
           "output_tokens_details": {"reasoning_tokens": 50}}
    assert normalize_usage(raw, "openai") == Usage(1000, 200, cached_tokens=400, reasoning_tokens=50)


def test_explicit_nulls_are_zero() -> None:
    raw = {"prompt_tokens": 10, "completion_tokens": None, "prompt_tokens_details": None}
    assert normalize_usage(raw, "openai") == Usage(10, 0)


def test_unknown_shape_is_an_error_not_zero() -> None:
    with pytest.raises(ValueError):
        normalize_usage({"tokens": 5}, "openai")


def test_one_half_even_rounding_per_record() -> None:
    half_nano = Price.per_million(Decimal("0.0005"), Decimal("0.0005"))  # 0.5 nano-dollar per token
    assert cost_nanos(Usage(1, 0), half_nano) == 0  # 0.5 -> 0 (even)
    assert cost_nanos(Usage(3, 0), half_nano) == 2  # 1.5 -> 2 (even)
    # Rounding each class separately would give 0 + 0; one rounding of the sum gives 1.
    assert cost_nanos(Usage(1, 1), half_nano) == 1


def test_worst_case_covers_any_actual_cost() -> None:
    worst = worst_case_nanos(12_050, 300, SONNET)
    # 12050 * 3.75e-6 + 300 * 1.5e-5 = 0.0451875 + 0.0045 = 0.0496875 USD
    assert worst == 49_687_500
    assert worst >= SONNET_COST


def test_estimate_is_flagged_and_nonzero() -> None:
    prompt = count_messages([{"role": "user", "content": "Hello there, how are you?"}], "gpt-4o")
    usage = estimate_usage(prompt, "I am fine, thanks.", "gpt-4o")
    assert usage.estimated
    assert usage.prompt_tokens > 5 and usage.completion_tokens > 3


def test_token_count_cache_is_exact_and_bounded() -> None:
    texts = [f"request {i}: " + "word " * (i % 50) for i in range(tokens._CACHE_ENTRIES + 500)]
    exact = [len(encoding_for("gpt-4o").encode(t)) for t in texts[:50]]
    counted = [count_text(t, "gpt-4o") for t in texts]
    assert counted[:50] == exact
    assert [count_text(t, "gpt-4o") for t in texts[:50]] == exact  # evicted or not, the answer is the same
    assert len(tokens._counts) <= tokens._CACHE_ENTRIES
    assert all(isinstance(k, tuple) and not any(isinstance(p, str) and len(p) > 20 for p in k)
               for k in tokens._counts)  # keys hold no prompt text


def test_money_text_is_exact() -> None:
    assert format_usd(123_450) == "0.000123450"
    assert format_usd(12_345_678_901_234) == "12345.678901234"
    assert format_usd(-5) == "-0.000000005"
    assert usd_to_nanos("0.000000001") == 1
    assert usd_to_nanos(Decimal("10.5")) == 10_500_000_000
    with pytest.raises(TypeError):
        usd_to_nanos(1.5)  # type: ignore[arg-type]


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

counts = st.integers(min_value=0, max_value=2_000_000)


@settings(max_examples=200, deadline=None)
@given(fresh=counts, read=counts, write=counts, out=counts)
def test_native_and_litellm_anthropic_shapes_agree(fresh: int, read: int, write: int, out: int) -> None:
    native = normalize_usage({"input_tokens": fresh, "output_tokens": out, "cache_read_input_tokens": read,
                              "cache_creation_input_tokens": write}, "anthropic")
    litellm = normalize_usage({"prompt_tokens": fresh + read + write, "completion_tokens": out,
                               "prompt_tokens_details": {"cached_tokens": read, "cache_creation_tokens": write},
                               "cache_read_input_tokens": read, "cache_creation_input_tokens": write}, "anthropic")
    assert native == litellm
    exact = (fresh * SONNET.input + read * SONNET.cached_input + write * SONNET.cache_write + out * SONNET.output)
    assert abs(Decimal(cost_nanos(native, SONNET)) - exact * 10**9) <= Decimal("0.5")
