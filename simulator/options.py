"""Knobs shared by the standalone server and the in-process provider, so both behave identically."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

FailKind = Literal["429", "500", "timeout", "mixed"]
FAIL_KINDS: tuple[FailKind, ...] = ("429", "500", "timeout", "mixed")


@dataclass(frozen=True, slots=True)
class SimulatorOptions:
    """How the simulated provider paces, fails and caches.

    Zero latencies mean "as fast as possible": benchmarks measure the proxy's overhead against this server, so
    nothing here may cost time unless asked for.
    """

    latency_ms: float = 0.0  # before a whole non-streamed response (and embeddings)
    ttft_ms: float = 0.0  # before the first chunk of a stream
    tokens_per_s: float = 0.0  # stream pacing after the first chunk; 0 = unpaced
    fail_rate: float = 0.0  # share of generation requests that fail, chosen by a seeded RNG
    fail_kind: FailKind = "mixed"
    fail_first: int = 0  # the first N generation requests fail regardless of fail_rate
    fail_seed: int = 0
    retry_after_s: float = 1.0  # sent with simulated 429s
    hang_s: float = 300.0  # how long a simulated timeout hangs before giving up
    cache_ttl_s: float = 300.0  # OpenAI drops idle prefixes after 5-10 minutes
    cache_max_entries: int = 100_000  # bounds memory: each entry is one 128-token prefix boundary
    record_max: int = 200  # request bodies kept for GET /_mock/requests
    outcomes: str = ""  # a routing-outcome JSONL file: answer its prompts with recorded grades (simulator.outcomes)
    outcomes_grade: str = "strong"  # which side's grade this deployment answers with: weak or strong

    def __post_init__(self) -> None:
        for name in ("latency_ms", "ttft_ms", "tokens_per_s", "retry_after_s", "hang_s", "cache_ttl_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError("fail_rate must be within [0, 1]")
        if self.fail_kind not in FAIL_KINDS:
            raise ValueError(f"fail_kind must be one of {', '.join(FAIL_KINDS)}")
        if self.fail_first < 0 or self.cache_max_entries < 0 or self.record_max < 0:
            raise ValueError("fail_first, cache_max_entries and record_max must be >= 0")
        if self.outcomes_grade not in ("weak", "strong"):
            raise ValueError("outcomes_grade must be weak or strong")

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for handing the options to uvicorn worker processes through the environment."""
        return asdict(self)
