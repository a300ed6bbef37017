"""The runtime install carries no litellm (it is the optional ``providers`` layer): the proxy serves OpenAI-wire and
simulated deployments on a fresh machine with neither litellm nor the network, a policy that needs litellm is
refused at load time naming the deployment and the install command, and the price table and tiktoken encodings it
ships are litellm's own, to the nano-dollar.

"A fresh machine" is a subprocess whose ``sitecustomize`` (first on PYTHONPATH) makes ``import litellm`` fail as
if it were not installed, unsets ``TIKTOKEN_CACHE_DIR`` and turns any tiktoken download into an error.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from metering.prices import TABLE_PATH, lookup
from metering.usage import Usage, cost_nanos
from proxy.cli import main
from tests.conftest import DEMO_KEYS, ROOT, demo_config
from text.tokens import ENCODINGS_DIR, SHIPPED_ENCODINGS

_FRESH_MACHINE = '''
import os, sys
sys.modules["litellm"] = None  # not installed: ``import litellm`` fails and find_spec answers None
os.environ.pop("TIKTOKEN_CACHE_DIR", None)
os.environ.pop("DATA_GYM_CACHE_DIR", None)
import tiktoken.load

def _offline(blobpath):
    raise RuntimeError(f"tiktoken tried to download {blobpath}")

tiktoken.load.read_file = _offline
'''

_ANTHROPIC_POLICY = """
admin_keys:
  - {id: admin, sha256: a1304128f87ba7aa357d7fe938db628cccb9ad9465ba832773a604aed2cfd54e}
tiers:
  - name: small
    deployments:
      - {id: small-sim, model: simulated/gpt-4o-mini}
  - name: frontier
    deployments:
      - id: claude
        model: anthropic/claude-sonnet-4-5-20250929
        api_key_env: ANTHROPIC_API_KEY
teams:
  research:
    keys:
      - {id: r, sha256: KEY_SHA256}
""".replace("KEY_SHA256", hashlib.sha256(b"sk-lean-research").hexdigest())


@pytest.fixture
def fresh_env(tmp_path: Path) -> dict[str, str]:
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(_FRESH_MACHINE)
    return {"PYTHONPATH": os.pathsep.join([str(shim), str(ROOT)])}


def _tiergate(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy.cli", *args], cwd=cwd, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60, check=False)


def test_the_shim_really_hides_litellm_and_the_network(fresh_env: dict[str, str], tmp_path: Path) -> None:
    probe = textwrap.dedent("""
        import importlib.util, os, tiktoken.load
        assert importlib.util.find_spec("litellm") is None and "TIKTOKEN_CACHE_DIR" not in os.environ
        try:
            import litellm
        except ImportError:
            pass
        else:
            raise SystemExit("litellm imported")
        try:
            tiktoken.load.read_file_cached("https://example.invalid/x.tiktoken")
        except RuntimeError as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", probe], env={**os.environ, **fresh_env}, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert "tiktoken tried to download" in out.stdout


def test_a_policy_needing_litellm_is_a_config_error_naming_the_deployment(fresh_env: dict[str, str],
                                                                         tmp_path: Path) -> None:
    policy = tmp_path / "anthropic.yaml"
    policy.write_text(_ANTHROPIC_POLICY)
    check = _tiergate(["check-config", str(policy)], fresh_env, tmp_path)
    assert check.returncode != 0
    line = next(n for n, text in enumerate(_ANTHROPIC_POLICY.splitlines(), 1) if "anthropic/" in text)
    assert f"{policy}:{line}: tiers.1.deployments.0.model: deployment 'claude'" in check.stdout + check.stderr
    assert "bash scripts/install.sh providers" in check.stdout + check.stderr
    assert "pip install 'tiergate[providers]'" in check.stdout + check.stderr
    assert "Traceback" not in check.stderr

    serve = _tiergate(["serve", "--config", str(policy), "--port", "1"], fresh_env, tmp_path)
    assert serve.returncode != 0
    assert "deployment 'claude'" in serve.stdout + serve.stderr and "Traceback" not in serve.stderr


def test_the_same_policy_loads_where_litellm_is_installed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """In this process, which has the dev layer (litellm included): no fresh interpreter is needed to show it."""
    policy = tmp_path / "anthropic.yaml"
    policy.write_text(_ANTHROPIC_POLICY)
    status = main(["check-config", str(policy)])
    out = capsys.readouterr()
    assert status == 0, out.out + out.err


def test_the_demo_serves_without_litellm_or_network(fresh_env: dict[str, str], start_proxy, tmp_path: Path) -> None:
    proxy = start_proxy(demo_config(tmp_path), env=fresh_env)
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=DEMO_KEYS["research"], max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Prove that there are infinitely many primes."}])
    completion = raw.parse()
    assert completion.choices[0].message.content and completion.usage is not None
    # priced from the shipped table: the header is the exact cost of the usage at the deployment's price
    price = lookup(completion.model).price  # type: ignore[union-attr]
    usage = Usage(completion.usage.prompt_tokens, completion.usage.completion_tokens)
    assert Decimal(raw.headers["x-tiergate-cost-usd"]) == Decimal(cost_nanos(usage, price)) / 10**9
    chunks = list(client.chat.completions.create(model="small", stream=True, stream_options={"include_usage": True},
                                                 messages=[{"role": "user", "content": "hi"}]))
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0
    emb = client.embeddings.create(model="text-embedding-3-small", input=["tokens counted offline"])
    assert emb.usage.prompt_tokens == 3
    assert httpx.get(proxy.url + "/readyz").status_code == 200
    log = proxy.output()
    assert "tiktoken tried to download" not in log and "litellm" not in log


def test_shipped_encodings_load_offline_under_tiktokens_cache_names(fresh_env: dict[str, str],
                                                                   tmp_path: Path) -> None:
    probe = textwrap.dedent("""
        from text.tokens import count_text, encoding_for
        for model in ("gpt-4o", "openai/gpt-4o-mini", "o1", "gpt-4", "text-davinci-003", "davinci",
                      "anthropic/claude-sonnet-4-5", "gpt-oss-120b"):
            print(model, encoding_for(model).name, count_text("hello world, tokens counted offline", model))
    """)
    out = subprocess.run([sys.executable, "-c", probe], env={**os.environ, **fresh_env}, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    names = {line.split()[0]: line.split()[1] for line in out.stdout.splitlines()}
    assert names == {"gpt-4o": "o200k_base", "openai/gpt-4o-mini": "o200k_base", "o1": "o200k_base",
                     "gpt-4": "cl100k_base", "text-davinci-003": "p50k_base",
                     "davinci": "o200k_base",  # r50k_base is not shipped: estimated with the default
                     "anthropic/claude-sonnet-4-5": "o200k_base", "gpt-oss-120b": "o200k_harmony"}
    shipped = {p.name for p in ENCODINGS_DIR.iterdir()}
    for name in SHIPPED_ENCODINGS:
        url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
        assert hashlib.sha1(url.encode()).hexdigest() in shipped, name
    assert len(shipped) == len(SHIPPED_ENCODINGS)  # nothing else in the cache dir tiktoken is pointed at


# -- the shipped data is litellm's own ------------------------------------------------------------------------------

def _litellm_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("litellm")
    assert spec is not None and spec.submodule_search_locations, "the dev layer installs litellm (providers)"
    return Path(next(iter(spec.submodule_search_locations)))


def test_shipped_table_and_encodings_are_the_pinned_litellms_byte_for_byte() -> None:
    """A litellm bump without ``scripts/vendor_litellm_data.py`` fails here."""
    source = _litellm_dir()
    assert TABLE_PATH.read_bytes() == (source / "model_prices_and_context_window_backup.json").read_bytes()
    for shipped in ENCODINGS_DIR.iterdir():
        assert shipped.read_bytes() == (source / "litellm_core_utils" / "tokenizers" / shipped.name).read_bytes()


def _config_models() -> set[str]:
    models: set[str] = set()
    for path in (ROOT / "configs").glob("*.yaml"):
        config = yaml.safe_load(path.read_text())
        for tier in config.get("tiers", []):
            for dep in tier.get("deployments", []):
                models.add(dep.get("price_as") or dep["model"])
        for dep in config.get("embeddings") or []:
            models.add(dep.get("price_as") or dep["model"])
    return models


# One xdist worker runs every case: each process that imports litellm pays ~4-6 s of CPU for it.
@pytest.mark.xdist_group("litellm")
@pytest.mark.parametrize("model", sorted(_config_models()))
def test_prices_of_the_shipped_configs_equal_litellms_to_the_nano_dollar(model: str) -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    facts = lookup(model)
    if facts is None:  # priced in the config itself (a self-hosted model): litellm has no price to compare
        assert model.startswith("hosted_vllm/"), model
        return
    entry = litellm.model_cost[facts.key]

    def dollars(field: str, fallback: str | None = "input_cost_per_token") -> Decimal:
        """litellm's float as its shortest repr (the JSON text); a missing cache price is the input price."""
        value = entry.get(field, entry.get(fallback) if fallback else None)
        return Decimal(repr(value)) if value is not None else Decimal(0)

    for prompt, completion, cached, written in [(1, 1, 0, 0), (1_234_567, 89_012, 0, 0), (100_000, 5, 40_000, 0),
                                                (7_777, 3_333, 1_000, 2_000), (123_456_789, 0, 0, 0)]:
        usage = Usage(prompt, completion, cached_tokens=cached, cache_write_tokens=written)
        expected = ((prompt - cached - written) * dollars("input_cost_per_token")
                    + cached * dollars("cache_read_input_token_cost")
                    + written * dollars("cache_creation_input_token_cost")
                    + completion * dollars("output_cost_per_token", None))
        assert cost_nanos(usage, facts.price) == int((expected * 10**9).to_integral_value()), (model, usage)
