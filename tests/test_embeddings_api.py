"""``/v1/embeddings`` on embedding deployments of their own, through the official openai SDK and LangChain against
a real proxy over loopback HTTP (the demo policy's simulated ``text-embedding-3-small``, no keys): routed by model
name or ``auto`` without the chat classifier or tiers, billed at the embedding price, recorded with purpose and api."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from metering.money import format_usd
from metering.prices import lookup
from tests.conftest import DEMO_KEYS, Server, demo_config, free_port, start_server
from tests.waiting import eventually

# text-embedding-3-small's price in litellm's table, per token, in integer nano-dollars ($0.02 / 1M tokens)
NANOS_PER_TOKEN = int(lookup("text-embedding-3-small").price.input * 1_000_000_000)  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    """The demo policy as shipped, its ledger in the test's directory."""
    tmp = tmp_path_factory.mktemp("embeddings")
    port = free_port()
    process = start_server(["serve", "--config", str(demo_config(tmp)), "--port", str(port)], port,
                            tmp / "proxy.log", "/readyz")
    yield process, tmp / "ledger.db"
    process.stop()


@pytest.fixture
def client(demo: tuple[Server, Path]) -> openai.OpenAI:
    return openai.OpenAI(base_url=demo[0].url + "/v1", api_key=DEMO_KEYS["research"], max_retries=0)


def ledger_row(ledger: Path, request_id: str) -> dict[str, Any]:
    """The request's one usage record, once the ledger has committed it (writes are batched)."""
    def rows() -> list[sqlite3.Row]:
        with sqlite3.connect(ledger) as conn:
            conn.row_factory = sqlite3.Row
            return conn.execute("SELECT * FROM records WHERE request_id = ?", (request_id,)).fetchall()

    found = eventually(rows, f"the usage record of {request_id}")
    assert len(found) == 1, f"{len(found)} records for {request_id}"
    return dict(found[0])


def test_sdk_embeds_with_the_real_model_name_billed_at_the_embedding_price(client: openai.OpenAI,
                                                                           demo: tuple[Server, Path]) -> None:
    raw = client.embeddings.with_raw_response.create(model="text-embedding-3-small",
                                                     input=["The quick brown fox", "jumps over the lazy dog"])
    result = raw.parse()
    assert [len(item.embedding) for item in result.data] == [1536, 1536]
    assert result.model == "text-embedding-3-small" and result.usage.prompt_tokens > 0
    assert raw.headers["x-tiergate-tier"] == "embedding" and raw.headers["x-tiergate-deployment"] == "embed-small-sim"
    assert "x-tiergate-score" not in raw.headers
    row = ledger_row(demo[1], raw.headers["x-request-id"])
    assert (row["purpose"], row["api"], row["tier"], row["model"], row["deployment"]) == (
        "embedding", "embeddings", "embedding", "text-embedding-3-small", "embed-small-sim")
    assert row["prompt_tokens"] == result.usage.prompt_tokens and row["completion_tokens"] == 0
    assert row["cost_nanos"] == result.usage.prompt_tokens * NANOS_PER_TOKEN == row["counterfactual_cost_nanos"]
    assert raw.headers["x-tiergate-cost-usd"] == format_usd(row["cost_nanos"])
    assert row["score"] is None and row["router_model"] is None and row["status"] == 200
    again = client.embeddings.create(model="text-embedding-3-small", input="The quick brown fox")
    assert again.data[0].embedding == result.data[0].embedding  # deterministic per (model, input)


def test_auto_embeds_with_the_teams_default_and_is_never_scored(client: openai.OpenAI,
                                                               demo: tuple[Server, Path]) -> None:
    raw = client.embeddings.with_raw_response.create(model="auto", input="route me to embeddings, not a chat tier")
    result = raw.parse()
    assert result.model == "text-embedding-3-small" and len(result.data[0].embedding) == 1536
    assert raw.headers["x-tiergate-tier"] == "embedding" and "x-tiergate-score" not in raw.headers
    row = ledger_row(demo[1], raw.headers["x-request-id"])
    assert row["requested_model"] == "auto" and row["model"] == "text-embedding-3-small"
    assert row["score"] is None and row["router_model"] is None  # the chat classifier never saw it
    assert row["cost_nanos"] == row["prompt_tokens"] * NANOS_PER_TOKEN


def test_a_team_without_pinning_still_names_its_embedding_model(demo: tuple[Server, Path]) -> None:
    support = openai.OpenAI(base_url=demo[0].url + "/v1", api_key=DEMO_KEYS["support"], max_retries=0)
    result = support.embeddings.create(model="text-embedding-3-small", input="support may embed", dimensions=256)
    assert len(result.data[0].embedding) == 256


def test_langchain_embeddings(demo: tuple[Server, Path]) -> None:
    # Imported here: langchain costs ~2-3 s of CPU to import, which every xdist worker would pay while collecting.
    from langchain_openai import OpenAIEmbeddings

    embedder = OpenAIEmbeddings(model="text-embedding-3-small", base_url=demo[0].url + "/v1",
                                api_key=DEMO_KEYS["research"], check_embedding_ctx_length=False, max_retries=0)
    vectors = embedder.embed_documents(["first document", "second document", "third"])
    assert [len(v) for v in vectors] == [1536] * 3 and vectors[0] != vectors[1]
    assert embedder.embed_query("first document") == pytest.approx(vectors[0])


@pytest.mark.parametrize("model", ["small", "gpt-4o", "text-embedding-9000"])
def test_chat_and_unknown_models_are_404_listing_the_embedding_models(client: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client.embeddings.create(model=model, input="x")
    assert exc.value.code == "model_not_found" and exc.value.param == "model"
    assert "'text-embedding-3-small'" in exc.value.message and "'embed-small-sim'" in exc.value.message


def test_embedding_models_are_not_chat_models(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="text-embedding-3-small", messages=[{"role": "user", "content": "x"}])
    assert exc.value.code == "model_not_found"


# ---- a policy of its own: fallbacks across deployments of one model, budgets held at the embedding price ------

POLICY = """\
metering:
  ledger: sqlite:///{ledger}
classifier:
  model: length
tiers:
  - name: small
    deployments:
      - {{id: small-sim, model: simulated/gpt-4o-mini}}
embeddings:
  - id: embed-broken
    model: simulated/text-embedding-3-small
    simulator: {{fail_rate: 1.0, fail_kind: "500"}}
  - id: embed-ok
    model: simulated/text-embedding-3-small
  - id: embed-large
    model: simulated/text-embedding-3-large
teams:
  t:
    keys:
      - {{id: t-key, sha256: "{sha}"}}
    embeddings: {{default: embed-broken, models: [text-embedding-3-small]}}
    budgets:
      team: {{daily_usd: "0.000001"}}
"""


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    import hashlib

    tmp = tmp_path_factory.mktemp("embeddings-own")
    config = tmp / "policy.yaml"
    config.write_text(POLICY.format(ledger=tmp / "ledger.db", sha=hashlib.sha256(b"sk-embed").hexdigest()))
    port = free_port()
    process = start_server(["serve", "--config", str(config), "--port", str(port)], port, tmp / "proxy.log",
                            "/readyz")
    yield process, tmp / "ledger.db"
    process.stop()


def test_fallback_to_another_deployment_of_the_same_model_and_budget_at_the_embedding_price(
        own: tuple[Server, Path]) -> None:
    """The team's cap is $0.000001 (1000 nano-dollars): 30 tokens fit at $0.02 / 1M (600) but not at its chat
    tier's $0.15 / 1M (4500), so the reservation itself shows the embedding price."""
    process, ledger = own
    client = openai.OpenAI(base_url=process.url + "/v1", api_key="sk-embed", max_retries=0)
    text = " ".join(["word"] * 30)
    raw = client.embeddings.with_raw_response.create(model="auto", input=text)
    result = raw.parse()
    assert raw.headers["x-tiergate-deployment"] == "embed-ok" and raw.headers["x-tiergate-attempts"] == "2"
    row = ledger_row(ledger, raw.headers["x-request-id"])
    assert row["deployment"] == "embed-ok" and row["cost_nanos"] == result.usage.prompt_tokens * NANOS_PER_TOKEN
    assert 0 < row["cost_nanos"] <= 1000 < result.usage.prompt_tokens * 150
    with pytest.raises(openai.NotFoundError) as exc:  # a model outside the team's embeddings.models
        client.embeddings.create(model="text-embedding-3-large", input="x")
    assert "'embed-ok'" in exc.value.message and "embed-large" not in exc.value.message
    with pytest.raises(openai.RateLimitError) as over:  # the cap holds for embeddings too
        for _ in range(3):
            client.embeddings.create(model="text-embedding-3-small", input=text)
    assert over.value.code == "budget_exceeded"
