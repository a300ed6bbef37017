"""Provider name -> client factory (as RouteLLM maps router names to classes): the pool asks the registry for a
deployment's client and never names a client class itself.

Two providers are built in: ``openai`` (the pooled aiohttp client, for every OpenAI-wire server) and ``litellm``
(everything else). A provider that lives outside ``upstream/`` registers itself with ``register`` when its module
is imported, and ``PLUGINS`` names that module, so it is imported only when a policy first uses the provider. That
is how the in-process simulator plugs in: ``simulated/<model>`` deployments make the pool import
``simulator.provider``, which registers ``simulated``. No core module imports the simulator, and a proxy whose
policy has no simulated deployment never loads it. Why a table and not setuptools entry points: an entry point
only exists after ``pip install`` of the package, and tests and ``python -m proxy.cli`` run from the source tree.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from router.policy import DeploymentSpec
from upstream.base import Upstream

if TYPE_CHECKING:
    import aiohttp


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """What a factory may use besides the deployment: the pool's defaults and its shared HTTP session."""

    timeout_s: float  # the deployment's own timeout_s, or the server default
    connect_timeout_s: float
    http_session: Callable[[], aiohttp.ClientSession]  # the pool's keep-alive session, opened on first use


Factory = Callable[[DeploymentSpec, ClientSettings], Upstream]

# Providers registered by a module outside upstream/: provider name -> the module that calls ``register``.
PLUGINS: dict[str, str] = {"simulated": "simulator.provider"}


def _openai_wire(dep: DeploymentSpec, settings: ClientSettings) -> Upstream:
    # imported here: the simulator imports this module, and needs no HTTP client
    from upstream.http import HttpUpstream

    assert dep.api_base is not None  # the policy fills in OpenAI's own base URL
    return HttpUpstream(settings.http_session(), dep.api_base, dep.api_key, settings.timeout_s,
                        settings.connect_timeout_s)


# Where a provider reached through litellm takes calls in its own format (``upstream.litellm_client``).
_NATIVE_BASES = {"anthropic/": "https://api.anthropic.com"}


def _litellm(dep: DeploymentSpec, settings: ClientSettings) -> Upstream:
    from upstream.http import HttpUpstream
    from upstream.litellm_client import LiteLLMUpstream

    native = None
    base = next((url for prefix, url in _NATIVE_BASES.items() if dep.model.startswith(prefix)), None)
    if base is not None and dep.native_apis - {"chat"}:  # it is sent calls in its own format
        native = HttpUpstream(settings.http_session(), dep.api_base or base, dep.api_key, settings.timeout_s,
                              settings.connect_timeout_s)
    return LiteLLMUpstream(dep.model, dep.api_base, dep.api_key, settings.timeout_s, native)


_factories: dict[str, Factory] = {"openai": _openai_wire, "litellm": _litellm}


def register(provider: str, factory: Factory) -> None:
    """Make ``provider`` deployments be served by clients from ``factory``; a later call replaces it."""
    _factories[provider] = factory


def factory(provider: str) -> Factory:
    """The factory for ``provider``, importing its plugin module on first use; ``LookupError`` if none."""
    found = _factories.get(provider)
    if found is None and provider in PLUGINS:
        importlib.import_module(PLUGINS[provider])
        found = _factories.get(provider)
    if found is None:
        raise LookupError(f"no upstream client is registered for provider {provider!r}")
    return found
