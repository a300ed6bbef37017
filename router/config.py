"""The YAML policy file as frozen pydantic models.

Config is data: it is validated once at load (``router.config_loader``), compiled into a ``router.policy.Policy``,
and swapped atomically on reload. Every model forbids unknown keys so a typo is an error naming the field, not a
silently ignored setting.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from classifiers.gate import DEFAULT_CONFIDENCE, DEFAULT_MARGIN, DEFAULT_MIN_HOLDOUT

Capability = Literal["tools", "json_schema", "vision", "reasoning"]
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PriceOverride(_Model):
    """$ per 1M tokens; wins over litellm's table (self-hosted models, negotiated rates)."""

    input: Decimal = Field(ge=0)
    output: Decimal = Field(ge=0)
    cached_input: Decimal | None = Field(default=None, ge=0)
    cache_write: Decimal | None = Field(default=None, ge=0)
    cache_write_1h: Decimal | None = Field(default=None, ge=0, description="a cache write kept an hour (Anthropic); "
                                           "default: cache_write")


class Deployment(_Model):
    """One concrete endpoint serving a model.

    ``model`` is a litellm model string (``openai/gpt-4o``, ``anthropic/claude-...``, ``hosted_vllm/...``) or
    ``simulated/<name>`` for the in-process simulator. Provider keys come from the environment or a file, never
    from the YAML itself.
    """

    id: str | None = Field(default=None, pattern=_NAME)
    model: str = Field(min_length=1)
    api_base: str | None = None
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    api_key_file: str | None = None
    price: PriceOverride | None = None
    price_as: str | None = Field(default=None, description="litellm table key to take prices from")
    context_window: int | None = Field(default=None, gt=0)
    capabilities: list[Capability] | None = None
    weight: float = Field(default=1.0, gt=0)
    timeout_s: float | None = Field(default=None, gt=0)
    simulator: dict[str, float | str | int] | None = Field(
        default=None, description="options for simulated/ deployments (latency_ms, ttft_ms, tokens_per_s, ...)"
    )
    apis: list[Literal["chat", "responses", "messages"]] | None = Field(default=None, description=(
        "wire formats the deployment speaks natively: a Responses or Messages request is passed through to it "
        "rather than translated to chat completions. Default: chat, plus responses for OpenAI's own API and "
        "messages for anthropic/ models"))


class EmbeddingPrice(_Model):
    """$ per 1M input tokens: an embedding has no output to price."""

    input: Decimal = Field(ge=0)


class EmbeddingDeployment(_Model):
    """One endpoint serving an embedding model (``openai/text-embedding-3-small``, ``simulated/...``) on
    ``/v1/embeddings`` only: outside the chat ladder, so it never shifts a tier's index, is never scored and never
    serves chat. Priced from litellm's table at its embedding (input) price unless ``price`` or ``price_as`` says
    otherwise; deployments serving the same upstream model name are each other's fallbacks."""

    id: str = Field(pattern=_NAME, description="what a team's 'embeddings' block names, and a model name of its own")
    model: str = Field(min_length=1)
    api_base: str | None = None
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    api_key_file: str | None = None
    price: EmbeddingPrice | None = None
    price_as: str | None = Field(default=None, description="litellm table key to take the price from")
    context_window: int | None = Field(default=None, gt=0, description="tokens per input (default: litellm's table)")
    weight: float = Field(default=1.0, gt=0)
    timeout_s: float | None = Field(default=None, gt=0)
    simulator: dict[str, float | str | int] | None = Field(
        default=None, description="options for simulated/ deployments (latency_ms, fail_rate, ...)"
    )


class TeamEmbeddings(_Model):
    """Which embedding deployments a team may call, and which one ``model: auto`` means on ``/v1/embeddings``."""

    default: str | None = Field(default=None, description=(
        "an embedding deployment id or model name; default: the first of the team's embedding models"))
    models: list[str] | None = Field(default=None, description=(
        "embedding deployment ids or model names the team may use; None: every embedding deployment"))


class Tier(_Model):
    """A rung of the ladder; tiers are listed cheapest first."""

    name: str = Field(pattern=_NAME)
    deployments: list[Deployment] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list, description="model_name entries of a LiteLLM model_list")

    @model_validator(mode="after")
    def _has_deployments(self) -> Tier:
        if not self.deployments and not self.models:
            raise ValueError("a tier needs at least one entry in 'deployments' or 'models'")
        return self


class LiteLLMParams(BaseModel):
    """``litellm_params`` of a LiteLLM ``model_list`` entry; extra provider settings are kept and ignored."""

    model_config = ConfigDict(extra="allow", frozen=True)
    model: str
    api_base: str | None = None
    api_key: str | None = None
    rpm: int | None = None
    tpm: int | None = None
    weight: float | None = None
    timeout: float | None = None

    @field_validator("api_key")
    @classmethod
    def _key_from_env(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("os.environ/"):
            raise ValueError("write provider keys as 'os.environ/VAR', never in clear in the YAML")
        return value


class ModelListEntry(BaseModel):
    """One entry of LiteLLM's ``model_list`` block, accepted as-is so LiteLLM users can migrate."""

    model_config = ConfigDict(extra="allow", frozen=True)
    model_name: str
    litellm_params: LiteLLMParams
    model_info: dict[str, object] = Field(default_factory=dict)


class ApiKey(_Model):
    """A client key, stored as its SHA-256 (hex) or read from an environment variable at load."""

    id: str = Field(pattern=_NAME)
    sha256: str | None = None
    env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    expires_at: datetime | None = None
    tags: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> ApiKey:
        if (self.sha256 is None) == (self.env is None):
            raise ValueError("give exactly one of 'sha256' or 'env'")
        if self.sha256 is not None and not _SHA256.match(self.sha256):
            raise ValueError("'sha256' must be 64 lowercase hex characters (sha256 of the key)")
        return self


class TierRange(_Model):
    floor: str | None = None
    ceiling: str | None = None


class RoutingSettings(_Model):
    """How the classifier score maps to tiers; thresholds come from ``tiergate calibrate``."""

    thresholds: dict[str, float] = Field(default_factory=dict)
    allow_pinning: bool = True
    pinnable_models: list[str] | None = Field(default=None, description="None: any model of an allowed tier")
    allow_tier_header: bool = True
    allow_downgrade_on_failure: bool = False

    @field_validator("thresholds")
    @classmethod
    def _in_unit_interval(cls, value: dict[str, float]) -> dict[str, float]:
        for tier, threshold in value.items():
            if not 0.0 <= threshold <= 1.0:
                raise ValueError(f"threshold for tier {tier!r} must be within [0, 1], got {threshold}")
        return value


class MaxTokens(_Model):
    default: int | None = Field(default=None, gt=0)
    cap: int | None = Field(default=None, gt=0)
    on_exceed: Literal["clamp", "reject"] = "clamp"


class BudgetLimit(_Model):
    daily_usd: Decimal | None = Field(default=None, gt=0)
    monthly_usd: Decimal | None = Field(default=None, gt=0)


class Budgets(_Model):
    team: BudgetLimit = Field(default_factory=BudgetLimit)
    per_key: BudgetLimit | None = None
    per_tag: dict[str, BudgetLimit] = Field(default_factory=dict, description="'tag=value' -> limit")
    on_exceeded: Literal["reject", "downgrade"] = "reject"
    redis_failure: Literal["closed", "open"] = "open"
    alert_thresholds: list[int] = Field(default_factory=lambda: [50, 80, 100], description=(
        "percents of each of the team's caps (team, key, tag) at which settled spend fires an alert, once per "
        "day or month; above 100 is useful with on_exceeded: downgrade, [] turns them off"))

    @field_validator("alert_thresholds")
    @classmethod
    def _distinct_percents(cls, value: list[int]) -> list[int]:
        if any(not 1 <= pct <= 1000 for pct in value):
            raise ValueError(f"alert thresholds are percents from 1 to 1000, got {value}")
        if len(set(value)) != len(value):
            raise ValueError(f"alert thresholds must be distinct, got {value}")
        return sorted(value)


class ContextSettings(_Model):
    history_budget_tokens: int | None = Field(default=None, gt=0)
    keep_last_turns: int = Field(default=4, ge=1)
    summary_timeout_s: float = Field(default=10.0, gt=0)
    provider_prefix_caching: bool = True
    response_cache: bool = False
    response_cache_ttl_s: int = Field(default=300, gt=0)
    stickiness_margin: float = Field(default=0.1, ge=0, le=1)
    prefix_affinity_margin: float = Field(default=0.05, ge=0, le=1, description=(
        "across conversations: a routed request whose static prefix (system messages + tools) has 1,024+ tokens "
        "and was served on a cheaper tier in the last 5 minutes stays there (its provider cache is warm) unless "
        "its score passes the threshold above that tier by this much; 0 turns it off. Separate from "
        "stickiness_margin: only the shared prefix is cached, not a whole conversation, and one warm tier holds "
        "every app request that shares the prompt, so the quality it trades is bounded tighter. Never holds a "
        "request on a dearer tier than its score's: that buys a cache with money (gpt-4o's cache reads cost 8x "
        "gpt-4o-mini's uncached input)"))
    session_headers: list[str] = Field(default_factory=lambda: ["x-claude-code-session-id", "session-id"],
                                       description=(
        "request headers naming the client's conversation (first present wins; Claude Code's, then Codex CLI's): "
        "tier stickiness keys off it rather than off the prompt's text"))

    @field_validator("session_headers")
    @classmethod
    def _header_names(cls, value: list[str]) -> list[str]:
        if any(not re.fullmatch(r"[A-Za-z0-9-]+", name) for name in value):
            raise ValueError(f"session headers must be header names (letters, digits, '-'), got {value}")
        return [name.lower() for name in value]


class LearningSettings(_Model):
    """Shadow sampling and a judge, per team (off unless given): a share of routed requests is also sent to the
    tier it was not routed to, a judge grades the two answers, and the outcome store keeps the grades for
    ``tiergate learn`` and the team's evidence report (``pipeline.shadow``)."""

    shadow_share: float = Field(default=0.05, ge=0, le=1, description="share of routed chat requests shadowed")
    shadow_daily_usd: Decimal = Field(default=Decimal("1.0"), gt=0, description=(
        "a day's cap on the team's shadow and judge spend; shadowing stops once it is reached"))
    judge: str = Field(pattern=_NAME, description="deployment id or tier name that grades the two answers")
    store_prompts: bool = Field(default=False, description="keep the messages in the outcome store (default: "
                                                           "features only)")
    tags: dict[str, str] = Field(default_factory=dict, description="only requests carrying all these tags")
    retrain_every_h: float | None = Field(default=None, gt=0, description=(
        "retrain the team's model from the outcome store this often (once per fleet, only when new judged rows "
        "came in) and promote it through the gate (``pipeline.retrain_schedule``); None: only on demand"))
    promote_margin: float = Field(default=DEFAULT_MARGIN, ge=0, le=1, description=(
        "held-out APGR a retrained model must add to the serving one's to be promoted"))
    min_holdout: int = Field(default=DEFAULT_MIN_HOLDOUT, ge=1, description=(
        "held-out judged rows the gate needs before it promotes anything"))
    promote_confidence: float = Field(default=DEFAULT_CONFIDENCE, ge=0, lt=1, description=(
        "confidence of the paired-bootstrap interval of the held-out APGR difference: a retrained model is promoted "
        "only when the interval's lower bound is above 0, and a promoted one is rolled back when, on the judged rows "
        "that arrived after its promotion (at least min_holdout), the upper bound is below 0; 0: the margin alone"))


class ResponsesSettings(_Model):
    """The Responses API, per team: the conversation store (``kvcache.responses``) and hosted tools."""

    store_ttl_days: int = Field(default=30, gt=0, le=3650, description=(
        "how long a stored response (and the history previous_response_id continues from) is kept"))
    hosted_tools: Literal["refuse", "drop"] = Field(default="refuse", description=(
        "hosted tools (web_search, file_search, ...) in a request the team may route to a deployment that does not "
        "speak the Responses API natively: 'refuse' answers 400 naming the tool; 'drop' leaves them out of the "
        "request (the model is not offered them) and names their types in the x-tiergate-dropped-tools header. "
        "'drop' suits agents such as Codex CLI that always offer web_search"))

    @property
    def store_ttl_s(self) -> int:
        return self.store_ttl_days * 86_400


class Team(_Model):
    keys: list[ApiKey] = Field(min_length=1)
    tiers: TierRange = Field(default_factory=TierRange)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    max_tokens: MaxTokens = Field(default_factory=MaxTokens)
    budgets: Budgets = Field(default_factory=Budgets)
    required_tags: list[str] = Field(default_factory=list)
    context: ContextSettings = Field(default_factory=ContextSettings)
    learning: LearningSettings | None = None
    embeddings: TeamEmbeddings = Field(default_factory=TeamEmbeddings)
    model_aliases: dict[str, str] = Field(default_factory=dict, description=(
        "requested model name (glob pattern, e.g. 'claude-sonnet-*') -> 'auto', a tier name or a pin (deployment "
        "id or model name); the first matching pattern in file order wins, and exact tier and pin names always "
        "mean themselves"))
    responses: ResponsesSettings = Field(default_factory=ResponsesSettings)


class MetricsAccess(_Model):
    """Who may scrape ``GET /metrics``, which shows team, tier and model names and every team's spend.

    ``admin_key`` (default): an admin key as ``Authorization: Bearer <key>``. ``bearer_token``: the token in the
    environment variable ``token_env`` (a scrape credential that cannot call the admin API). ``none``: anyone who
    reaches the port (a private network only).
    """

    auth: Literal["admin_key", "bearer_token", "none"] = "admin_key"
    token_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @model_validator(mode="after")
    def _token_with_bearer(self) -> MetricsAccess:
        if (self.auth == "bearer_token") != (self.token_env is not None):
            raise ValueError("give 'token_env' (the variable holding the scrape token) with auth: bearer_token, "
                             "and only then")
        return self


class ServerSettings(_Model):
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    upstream_timeout_s: float = Field(default=300.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    retry_budget_s: float = Field(default=60.0, gt=0)
    cooldown_after_failures: int = Field(default=3, ge=1)
    cooldown_s: float = Field(default=30.0, gt=0)
    metrics: MetricsAccess = Field(default_factory=MetricsAccess)


class MeteringSettings(_Model):
    ledger: str = Field(default="sqlite:///var/tiergate-ledger.db", pattern=r"^(sqlite:///|postgres(ql)?://)")
    redis: str | None = Field(default=None, pattern=r"^(rediss?://|unix://|redis\+sentinel://[^/?#]+/[^/?#]+)",
                              description="redis://, rediss://, unix:// or redis+sentinel://host:port,.../service[/db] "
                                          "(metering.redis_client)")
    budget_lease_share: float = Field(default=0.02, ge=0, le=0.5, description=(
        "with Redis: each worker reserves this share of a cap at a time and serves requests from it locally "
        "(0: one Redis round trip per request)"))
    budget_lease_ttl_s: float = Field(default=30.0, gt=0, description=(
        "how long a killed worker's lease keeps its share of a cap held back (renewed every third of it while "
        "the worker lives); its spend is re-seeded from the ledger when it expires, so keep it above a worker's "
        "restart and spool replay or the dead worker's last records miss the re-seed"))
    ledger_schema: str = Field(default="public", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="PostgreSQL schema")
    spool_dir: str | None = Field(default=None, description="durability spool; default beside the SQLite file, "
                                                              "or var/spool/pg-<hash> for PostgreSQL")
    alert_webhook: str | None = Field(default=None, description="Slack-compatible URL for budget alerts")


class ClassifierSettings(_Model):
    model: str = Field(default="default", description="'default' (shipped ONNX), 'length', or a path to an .onnx")


class Experiment(_Model):
    """An experiment manifest (the seed's governance): who runs it, why, on whose money, until when.

    Requests of ``team`` are attributed to it by key (``keys``: key ids of the team), by tags (``tags``: all must
    match), or by the client sending the tag ``experiment: <name>``; attribution writes that tag, so the ledger and
    every report group by it (``router.experiments``). Its budget is one cap over its whole life; outside its window
    (``starts_at`` to the expiry) its requests are refused (403 ``experiment_expired``).

    The expiry must be the same in every worker and after every restart, so it is never counted from when a file
    was loaded: give ``expires_at``, or ``starts_at`` with ``ttl`` (default 24h unless ``production``).
    """

    name: str = Field(pattern=_NAME)
    owner: str = Field(min_length=1)
    purpose: str = Field(min_length=1)
    team: str = Field(min_length=1)
    budget_usd: Decimal = Field(default=Decimal(1000), gt=0, description="over the experiment's whole life")
    starts_at: datetime | None = Field(default=None, description="anchors 'ttl'; requests before it are refused")
    ttl: str | None = Field(default=None, pattern=r"^[1-9][0-9]*[hd]$", description="24h, 7d: from 'starts_at'")
    expires_at: datetime | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    keys: list[str] = Field(default_factory=list)
    production: bool = Field(default=False, description="no default TTL (it still expires if given one)")

    @model_validator(mode="after")
    def _one_expiry(self) -> Experiment:
        if self.ttl is not None and self.expires_at is not None:
            raise ValueError("give 'ttl' (counted from 'starts_at') or 'expires_at', not both")
        if self.ttl is not None and self.starts_at is None:
            raise ValueError("'ttl' needs 'starts_at' to count from (a TTL counted from when each worker loaded "
                             "the file would differ between workers and restarts); or give 'expires_at'")
        if not self.production and self.expires_at is None and self.starts_at is None:
            raise ValueError("a non-production experiment expires (default TTL 24h): give 'expires_at', or "
                             "'starts_at' (with an optional 'ttl'), or set 'production: true'")
        if "experiment" in self.tags:
            raise ValueError("'tags' may not name 'experiment': attribution sets that tag (a client may send "
                             "experiment: <name> itself without it being listed)")
        return self


class Config(_Model):
    server: ServerSettings = Field(default_factory=ServerSettings)
    metering: MeteringSettings = Field(default_factory=MeteringSettings)
    classifier: ClassifierSettings = Field(default_factory=ClassifierSettings)
    admin_keys: list[ApiKey] = Field(default_factory=list)
    model_list: list[ModelListEntry] = Field(default_factory=list)
    tiers: list[Tier] = Field(min_length=1)
    embeddings: list[EmbeddingDeployment] = Field(default_factory=list, description=(
        "embedding deployments, served on /v1/embeddings only (EmbeddingDeployment)"))
    teams: dict[str, Team] = Field(min_length=1)
    experiments: list[Experiment] = Field(default_factory=list, description="experiment manifests (Experiment)")
