"""The compiled, immutable policy: tiers with priced deployments, teams, and the key index.

``compile_policy`` turns a validated ``Config`` into lookups the hot path can use without re-deriving anything
per request. A request holds one ``Policy`` reference from start to end, so a reload never changes the rules
under an in-flight request.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from metering.prices import Price, lookup
from router.aliases import NO_ALIASES, ModelAliases, compile_aliases
from router.config import ApiKey, Config, Deployment, EmbeddingDeployment, PriceOverride, Team
from router.experiments import ExperimentConfigError, Experiments, compile_experiments

Provider = Literal["simulated", "openai", "litellm"]
# litellm prefixes whose wire format is OpenAI's own: served by the pooled direct HTTP client.
_OPENAI_WIRE = {"openai", "hosted_vllm", "openai_compatible", "custom_openai"}
_OPENAI_BASE = "https://api.openai.com/v1"
# litellm is an optional extra (~300 MB with its dependencies): a policy that needs it says so when it is loaded.
_LITELLM_INSTALL = "bash scripts/install.sh providers (or pip install 'tiergate[providers]')"


class PolicyError(Exception):
    """A semantic error found while compiling; ``loc`` is the config path so the loader can name the line."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


def hash_key(key: str) -> str:
    """Keys are stored and compared only as SHA-256 hex."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class DeploymentSpec:
    id: str
    tier: str
    tier_index: int
    model: str  # litellm model string as configured
    upstream_model: str  # the name sent in the upstream request body
    provider: Provider
    api_base: str | None
    api_key: str | None = field(repr=False)
    price: Price
    context_window: int
    capabilities: frozenset[str]
    weight: float
    timeout_s: float | None
    simulator: dict[str, Any] | None
    native_apis: frozenset[str] = frozenset({"chat"})  # wire formats it is sent untranslated (``Deployment.apis``)


@dataclass(frozen=True, slots=True)
class TierSpec:
    name: str
    index: int
    deployments: tuple[DeploymentSpec, ...]
    capabilities: frozenset[str]  # what every deployment of the tier can do
    context_window: int  # the smallest window among its deployments


# Embedding deployments (``embeddings:``) are not rungs of the chat ladder: they report this tier (ledger, metrics)
# and an index below every chat tier, so no chat rule keyed by tier index (downgrade, stickiness) applies to them.
EMBEDDING_TIER = "embedding"
EMBEDDING_TIER_INDEX = -1


@dataclass(frozen=True, slots=True)
class EmbeddingTable:
    """What a team may send to ``/v1/embeddings`` (``router.embeddings`` routes by it)."""

    default: str | None = None  # the name ``auto`` means; None: the team has no embedding model
    pins: dict[str, tuple[DeploymentSpec, ...]] = field(default_factory=dict)  # names -> the team's deployments


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: resolved from the API key, never carrying the key itself."""

    key_id: str
    team: str | None  # None for admin keys
    admin: bool
    tags: dict[str, str]
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class TeamPolicy:
    name: str
    settings: Team
    floor: int
    ceiling: int
    thresholds: tuple[float | None, ...]  # per tier index; None = no threshold set
    tier_names: tuple[str, ...]  # the tiers from floor to ceiling
    pins: dict[str, tuple[DeploymentSpec, ...]]  # pin names the team may use -> its deployments serving them
    models: tuple[str, ...]  # every model name the team may send: "auto", its tiers, its pins, its embedding models
    embeddings: EmbeddingTable = field(default_factory=EmbeddingTable)
    aliases: ModelAliases = NO_ALIASES  # ``model_aliases``: other requested names -> one of ``models``


@dataclass(frozen=True)
class Policy:
    config: Config
    tiers: tuple[TierSpec, ...]
    teams: dict[str, TeamPolicy]
    keys: dict[str, Principal]  # sha256 hex -> principal
    by_name: dict[str, tuple[DeploymentSpec, ...]]  # pin names -> deployments serving them
    tier_by_name: dict[str, int]
    every_model: tuple[str, ...]  # "auto", every tier, every pin and embedding name: what an admin key is shown
    warnings: tuple[str, ...]
    sha256: str = ""
    source: str = ""
    loaded_at: float = 0.0
    experiments: Experiments = field(default_factory=Experiments)  # manifests and their attribution lookups

    def allowed_models(self, team: str | None) -> tuple[str, ...]:
        """The model names ``decide()`` accepts from ``team`` (``None``: an admin key, which routes nothing but
        may see everything). ``/v1/models`` lists exactly these."""
        return self.every_model if team is None else self.teams[team].models


def _read_secret(env: str | None, file: str | None) -> str | None:
    if env:
        return os.environ.get(env) or None
    if file:
        try:
            return Path(file).read_text(encoding="utf-8").strip() or None
        except OSError:
            return None
    return None


def _provider(model: str, api_base: str | None) -> tuple[Provider, str]:
    prefix, _, rest = model.partition("/")
    if prefix == "simulated" and rest:
        return "simulated", rest
    if prefix in _OPENAI_WIRE and rest:
        return "openai", rest
    if not rest:
        return "openai", model  # a bare name is an OpenAI model in litellm's convention
    return "litellm", model


def _native_apis(spec: Deployment, provider: Provider, api_base: str | None) -> frozenset[str]:
    """What the deployment is sent untranslated: as configured, else what its provider is known to speak."""
    if spec.apis is not None:
        return frozenset(spec.apis)
    if provider == "openai" and api_base == _OPENAI_BASE:  # OpenAI itself; a compatible server may lack Responses
        return frozenset({"chat", "responses"})
    if spec.model.startswith("anthropic/"):
        return frozenset({"chat", "messages"})
    return frozenset({"chat"})


def _deployment(
    spec: Deployment, tier: str, tier_index: int, position: int, loc: tuple[str | int, ...], warnings: list[str]
) -> DeploymentSpec:
    provider, upstream_model = _provider(spec.model, spec.api_base)
    if provider == "litellm" and importlib.util.find_spec("litellm") is None:
        raise PolicyError(loc + ("model",), f"deployment {spec.id or f'{tier}-{position}'!r} ({spec.model}) is "
                          f"served through litellm, which is not installed: {_LITELLM_INSTALL}")
    facts = lookup(spec.price_as or spec.model)
    if spec.price is not None:
        p = spec.price
        price = Price.per_million(p.input, p.output, p.cached_input, p.cache_write, p.cache_write_1h)
    elif facts is not None:
        price = facts.price
    else:
        raise PolicyError(
            loc + ("price",),
            f"no known price for {spec.model!r}: add 'price' (per 1M tokens) or 'price_as' naming a priced model",
        )
    window = spec.context_window or (facts.context_window if facts else None)
    if window is None:
        raise PolicyError(loc + ("context_window",), f"context window of {spec.model!r} unknown: set 'context_window'")
    caps = (frozenset(spec.capabilities) if spec.capabilities is not None
            else (facts.capabilities if facts else frozenset()))
    api_key = _read_secret(spec.api_key_env, spec.api_key_file)
    if provider != "simulated" and (spec.api_key_env or spec.api_key_file) and api_key is None:
        source = spec.api_key_env or spec.api_key_file
        warnings.append(f"deployment {spec.id or spec.model!r}: no API key found in {source}")
    api_base = spec.api_base
    if provider == "openai" and api_base is None:
        api_base = _OPENAI_BASE
    return DeploymentSpec(
        id=spec.id or f"{tier}-{position}",
        tier=tier,
        tier_index=tier_index,
        model=spec.model,
        upstream_model=upstream_model,
        provider=provider,
        api_base=api_base.rstrip("/") if api_base else None,
        api_key=api_key,
        price=price,
        context_window=int(window),
        capabilities=caps,
        weight=spec.weight,
        timeout_s=spec.timeout_s,
        simulator=dict(spec.simulator) if spec.simulator else None,
        native_apis=_native_apis(spec, provider, api_base),
    )


def _from_model_list(config: Config, name: str) -> list[Deployment]:
    """LiteLLM ``model_list`` entries become deployments; ``os.environ/VAR`` keys become env references."""
    out: list[Deployment] = []
    for entry in config.model_list:
        if entry.model_name != name:
            continue
        params = entry.litellm_params
        info = entry.model_info
        key_env = params.api_key.removeprefix("os.environ/") if params.api_key else None
        price = None
        if "input_cost_per_token" in info and "output_cost_per_token" in info:
            million = Decimal(1_000_000)
            price = PriceOverride(
                input=Decimal(str(info["input_cost_per_token"])) * million,
                output=Decimal(str(info["output_cost_per_token"])) * million,
            )
        window = info.get("max_input_tokens")
        out.append(
            Deployment(
                id=f"{name}-{len(out)}" if len(out) else name,
                model=params.model,
                api_base=params.api_base,
                api_key_env=key_env,
                price=price,
                context_window=int(window) if isinstance(window, int) else None,
                weight=params.weight or 1.0,
                timeout_s=params.timeout,
            )
        )
    return out


def _principal(key: ApiKey, team: str | None, warnings: list[str]) -> tuple[str, Principal] | None:
    if key.sha256 is not None:
        digest = key.sha256
    else:
        value = os.environ.get(key.env or "")
        if not value:
            warnings.append(f"key {key.id!r}: environment variable {key.env} is not set; the key is disabled")
            return None
        digest = hash_key(value)
    expires = key.expires_at
    if expires is not None and expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)  # YAML timestamps without a zone are read as UTC
    return digest, Principal(key_id=key.id, team=team, admin=team is None, tags=dict(key.tags), expires_at=expires)


def _pin_names(dep: DeploymentSpec, alias: str | None) -> tuple[str, ...]:
    """Every name that pins ``dep``, the upstream's own name first (what ``/v1/models`` has always shown)."""
    names = (dep.upstream_model, alias, dep.model, dep.id)
    return tuple(n for i, n in enumerate(names) if n is not None and n not in names[:i])


def _team_policy(name: str, team: Team, tiers: tuple[TierSpec, ...], order: dict[str, int],
                 pins: dict[str, tuple[DeploymentSpec, ...]], embeddings: EmbeddingTable) -> TeamPolicy:
    """A team's bounds and the names it may route by, compiled once so ``decide()``, ``router.embeddings`` and
    ``/v1/models`` read the same table: pins only if pinning is allowed (and the name is pinnable), narrowed to the
    team's tiers; its embedding models (``_team_embeddings``)."""
    floor = order[team.tiers.floor] if team.tiers.floor else 0
    ceiling = order[team.tiers.ceiling] if team.tiers.ceiling else len(tiers) - 1
    routing = team.routing
    allowed: dict[str, tuple[DeploymentSpec, ...]] = {}
    if routing.allow_pinning:
        for pin, deployments in pins.items():
            if routing.pinnable_models is not None and pin not in routing.pinnable_models:
                continue
            within = tuple(d for d in deployments if floor <= d.tier_index <= ceiling)
            if within:
                allowed[pin] = within
    tier_names = tuple(t.name for t in tiers[floor:ceiling + 1])
    models = ("auto", *tier_names, *allowed, *embeddings.pins)
    for pattern, target in team.model_aliases.items():
        if target not in models:
            raise PolicyError(("teams", name, "model_aliases", pattern),
                              f"alias target {target!r} is not a model team {name!r} may use: 'auto', its tiers "
                              f"{list(tier_names)}, a pin it is allowed ({sorted(allowed)}) or an embedding model "
                              f"({sorted(embeddings.pins)})")
    return TeamPolicy(
        name=name,
        settings=team,
        floor=floor,
        ceiling=ceiling,
        thresholds=tuple(routing.thresholds.get(t.name) for t in tiers),
        tier_names=tier_names,
        pins=allowed,
        models=models,
        embeddings=embeddings,
        aliases=compile_aliases(team.model_aliases, models),
    )


def _embedding_deployment(spec: EmbeddingDeployment, loc: tuple[str | int, ...], warnings: list[str]) -> DeploymentSpec:
    """Compiled like a chat deployment (provider, secrets, window), priced at its input price only; a model the
    price table knows as something other than an embedding model is refused."""
    priced_as = spec.price_as or spec.model
    facts = lookup(priced_as)
    if facts is not None and facts.mode not in (None, "embedding"):
        raise PolicyError(loc + ("price_as" if spec.price_as else "model",),
                          f"{priced_as!r} is a {facts.mode} model in litellm's price table, not an embedding model")
    price = PriceOverride(input=spec.price.input, output=Decimal(0)) if spec.price is not None else None
    as_deployment = Deployment(id=spec.id, model=spec.model, api_base=spec.api_base, api_key_env=spec.api_key_env,
                               api_key_file=spec.api_key_file, price=price, price_as=spec.price_as,
                               context_window=spec.context_window, capabilities=[], weight=spec.weight,
                               timeout_s=spec.timeout_s, simulator=spec.simulator)
    return _deployment(as_deployment, EMBEDDING_TIER, EMBEDDING_TIER_INDEX, 0, loc, warnings)


def _embedding_index(config: Config, chat_names: set[str], warnings: list[str]
                     ) -> tuple[tuple[DeploymentSpec, ...], dict[str, tuple[DeploymentSpec, ...]]]:
    """Every embedding deployment and the names that reach it; a name may not also mean a chat tier or model."""
    if config.embeddings and EMBEDDING_TIER in {t.name for t in config.tiers}:
        index = [t.name for t in config.tiers].index(EMBEDDING_TIER)
        raise PolicyError(("tiers", index, "name"), f"tier name {EMBEDDING_TIER!r} is what embedding deployments "
                          "report as their tier: name the chat tier otherwise")
    deployments: list[DeploymentSpec] = []
    by_name: dict[str, list[DeploymentSpec]] = {}
    for i, spec in enumerate(config.embeddings):
        loc: tuple[str | int, ...] = ("embeddings", i)
        dep = _embedding_deployment(spec, loc, warnings)
        if any(d.id == dep.id for d in deployments):
            raise PolicyError(loc + ("id",), f"embedding deployment id {dep.id!r} is used twice")
        for name in _pin_names(dep, None):
            if name in chat_names:
                raise PolicyError(loc + ("id" if name == dep.id else "model",), f"{name!r} already names a chat tier, "
                                  "model or deployment: an embedding deployment needs names of its own")
            by_name.setdefault(name, []).append(dep)
        deployments.append(dep)
    return tuple(deployments), {k: tuple(v) for k, v in by_name.items()}


def _team_embeddings(name: str, team: Team, deployments: tuple[DeploymentSpec, ...],
                     by_name: dict[str, tuple[DeploymentSpec, ...]]) -> EmbeddingTable:
    """The team's embedding names (``embeddings.models``, default every deployment) and what ``auto`` means
    (``embeddings.default``, default the first of them)."""
    loc: tuple[str | int, ...] = ("teams", name, "embeddings")
    settings = team.embeddings
    chosen = {d.id for d in deployments}
    if settings.models is not None:
        chosen = set()
        for k, model in enumerate(settings.models):
            if model not in by_name:
                raise PolicyError(loc + ("models", k), f"unknown embedding model {model!r} (embedding deployments: "
                                  f"{[d.id for d in deployments]})")
            chosen.update(d.id for d in by_name[model])
    pins: dict[str, list[DeploymentSpec]] = {}
    for dep in (d for d in deployments if d.id in chosen):  # declaration order: the first is the default default
        for pin in _pin_names(dep, None):
            pins.setdefault(pin, []).append(dep)
    default = settings.default
    if default is not None and default not in pins:
        known = "an unknown embedding model" if default not in by_name else "not among its embeddings.models"
        raise PolicyError(loc + ("default",), f"{default!r} is {known}; team {name!r} may use {sorted(pins)}")
    if default is None and pins:
        default = next(iter(pins))
    return EmbeddingTable(default, {k: tuple(v) for k, v in pins.items()})


def _check_references(config: Config) -> None:
    """Cross-field rules pydantic cannot place on one field; each error points at the offending entry."""
    names = [tier.name for tier in config.tiers]
    listed = {entry.model_name for entry in config.model_list}
    for i, tier in enumerate(config.tiers):
        if tier.name in names[:i]:
            raise PolicyError(("tiers", i, "name"), f"tier name {tier.name!r} is used twice")
        for name in tier.models:
            if name not in listed:
                raise PolicyError(("tiers", i, "models"), f"model {name!r} is not in model_list")
    order = {name: i for i, name in enumerate(names)}
    key_ids = {key.id for key in config.admin_keys}
    for team_name, team in config.teams.items():
        loc: tuple[str | int, ...] = ("teams", team_name)
        for bound in ("floor", "ceiling"):
            value = getattr(team.tiers, bound)
            if value is not None and value not in order:
                raise PolicyError(loc + ("tiers", bound), f"unknown tier {value!r} (tiers: {names})")
        if order.get(team.tiers.floor or names[0], 0) > order.get(team.tiers.ceiling or names[-1], len(names) - 1):
            raise PolicyError(loc + ("tiers",), f"floor {team.tiers.floor!r} is above ceiling {team.tiers.ceiling!r}")
        thresholds = team.routing.thresholds
        unknown = sorted(set(thresholds) - set(names))
        if unknown:
            raise PolicyError(loc + ("routing", "thresholds"), f"thresholds name unknown tiers {unknown}")
        ordered = [thresholds[name] for name in names if name in thresholds]
        if ordered != sorted(ordered):
            raise PolicyError(loc + ("routing", "thresholds"),
                              "thresholds must not decrease from cheaper to richer tiers")
        if team.learning is not None and team.learning.judge not in names and not any(
                (d.id or f"{t.name}-{i}") == team.learning.judge
                for t in config.tiers for i, d in enumerate(t.deployments)):
            raise PolicyError(loc + ("learning", "judge"), f"judge {team.learning.judge!r} is neither a tier nor a "
                              "deployment id")
        for k, key in enumerate(team.keys):
            if key.id in key_ids:
                raise PolicyError(loc + ("keys", k, "id"), f"key id {key.id!r} is used twice")
            key_ids.add(key.id)


def compile_policy(config: Config) -> Policy:
    """Resolve prices, capabilities, secrets and key hashes; raises ``PolicyError`` on a semantic error."""
    _check_references(config)
    warnings: list[str] = []
    tiers: list[TierSpec] = []
    by_name: dict[str, list[DeploymentSpec]] = {}
    seen_ids: set[str] = set()
    for t_index, tier in enumerate(config.tiers):
        specs: list[tuple[Deployment, str | None]] = [(d, None) for d in tier.deployments]
        specs += [(d, name) for name in tier.models for d in _from_model_list(config, name)]
        deployments = []
        for position, (spec, alias) in enumerate(specs):
            loc: tuple[str | int, ...] = ("tiers", t_index, "deployments", position)
            dep = _deployment(spec, tier.name, t_index, position, loc, warnings)
            if dep.id in seen_ids:
                raise PolicyError(loc + ("id",), f"deployment id {dep.id!r} is used twice")
            seen_ids.add(dep.id)
            deployments.append(dep)
            for name in _pin_names(dep, alias):
                by_name.setdefault(name, []).append(dep)
        caps = frozenset.intersection(*(d.capabilities for d in deployments))
        tiers.append(
            TierSpec(
                name=tier.name,
                index=t_index,
                deployments=tuple(deployments),
                capabilities=caps,
                context_window=min(d.context_window for d in deployments),
            )
        )
    order = {t.name: t.index for t in tiers}
    # A tier's name (and "auto") always means the tier (the router): never a pin.
    pins = {k: tuple(v) for k, v in by_name.items() if k not in order and k != "auto"}
    embeddings, embedding_names = _embedding_index(config, {"auto", *order, *by_name}, warnings)
    teams: dict[str, TeamPolicy] = {}
    keys: dict[str, Principal] = {}
    for key in config.admin_keys:
        entry = _principal(key, None, warnings)
        if entry:
            keys[entry[0]] = entry[1]
    for name, team in config.teams.items():
        table = _team_embeddings(name, team, embeddings, embedding_names)
        teams[name] = _team_policy(name, team, tuple(tiers), order, pins, table)
        for k_index, key in enumerate(team.keys):
            entry = _principal(key, name, warnings)
            if entry is None:
                continue
            if entry[0] in keys:
                raise PolicyError(("teams", name, "keys", k_index), "this key's hash is already used by another key")
            keys[entry[0]] = entry[1]
    try:
        experiments = compile_experiments(config)
    except ExperimentConfigError as exc:
        raise PolicyError(exc.loc, exc.message) from None
    return Policy(
        config=config,
        experiments=experiments,
        tiers=tuple(tiers),
        teams=teams,
        keys=keys,
        by_name={k: tuple(v) for k, v in by_name.items()},
        tier_by_name=order,
        every_model=("auto", *order, *pins, *embedding_names),
        warnings=tuple(warnings),
    )
