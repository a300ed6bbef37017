"""Config validation: every error names the file, the line and the field; demo configs stay valid."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from router.config_loader import ConfigError, _parse_yaml, load_policy, parse_policy
from tests.conftest import ROOT
from tests.forked import run_cli

VALID = """\
tiers:
  - name: small
    deployments:
      - model: openai/gpt-4o-mini
  - name: big
    deployments:
      - model: openai/gpt-4o
teams:
  a:
    keys:
      - id: a-key
        sha256: "0000000000000000000000000000000000000000000000000000000000000000"
"""


def _issue(text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_policy(text, "p.yaml")
    return str(exc.value)


@pytest.mark.parametrize("name", ["demo.yaml", "default.yaml", "bench.yaml"])
def test_shipped_configs_are_valid(name: str) -> None:
    policy = load_policy(ROOT / "configs" / name)
    assert len(policy.tiers) >= 3
    assert policy.sha256 and policy.loaded_at > 0


def test_valid_policy_compiles_prices_from_litellm_table() -> None:
    policy = parse_policy(VALID)
    small = policy.tiers[0].deployments[0]
    assert small.upstream_model == "gpt-4o-mini" and small.provider == "openai"
    assert small.price.input * 1_000_000 == Decimal("0.15")
    assert "tools" in policy.tiers[0].capabilities


def test_broken_yaml_names_file_and_line() -> None:
    message = _issue("tiers:\n  - name: small\n    deployments: [\n")
    assert message.startswith("p.yaml:") and "invalid YAML" in message


@pytest.mark.parametrize(("text", "expected"), [
    ("teams: &t\n  a: *t\n", "p.yaml:1: <root>: invalid YAML: an anchor refers to itself"),
    ("teams: &x [*x]\n", "p.yaml:1: <root>: invalid YAML: an anchor refers to itself"),
    ("? [a]\n: 1\n", "p.yaml:1: <root>: invalid YAML: a mapping key must be a single value, not a list or a mapping"),
    ("teams:\n  ? {a: 1}\n  : 1\n", "p.yaml:2: <root>: invalid YAML: a mapping key must be a single value, not a "
                                       "list or a mapping"),
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [{', '.join(['*' + p] * 10)}]\n" for p, n in zip("abcdef", "bcdefg")),
     "invalid YAML: aliases expand the document past 100000 nodes"),
    ("a: " + "[" * 1000 + "]" * 1000 + "\n", "p.yaml: <root>: invalid YAML: nested too deeply"),
])
def test_yaml_that_cannot_be_built_is_a_config_error(text: str, expected: str) -> None:
    """Neither a traceback in check-config nor an exception a reload does not catch (it keeps the running policy
    only on a ConfigError): cyclic anchors, list or mapping keys, alias bombs, absurd nesting."""
    assert expected in _issue(text)


def test_aliases_still_share_an_anchors_data() -> None:
    data, lines = _parse_yaml("a: &x {b: [1, 2]}\nc: *x\nd: [*x, *x]\n", "p.yaml")
    assert data == {"a": {"b": [1, 2]}, "c": {"b": [1, 2]}, "d": [{"b": [1, 2]}, {"b": [1, 2]}]}
    assert (lines[("a",)], lines[("c",)], lines[("d", 1)]) == (1, 2, 1)  # a key's line; an alias item: its anchor's


def test_schema_error_names_line_and_field() -> None:
    text = VALID.replace("      - model: openai/gpt-4o\n", "      - model: openai/gpt-4o\n        weight: -2\n")
    message = _issue(text)
    assert "p.yaml:8: tiers.1.deployments.0.weight:" in message


def test_unknown_key_is_an_error_not_ignored() -> None:
    message = _issue(VALID.replace("  a:\n", "  a:\n    budgett: {}\n"))
    assert "p.yaml:10: teams.a.budgett: Extra inputs are not permitted" in message


def test_unknown_tier_reference() -> None:
    message = _issue(VALID.replace("  a:\n", "  a:\n    tiers: {ceiling: huge}\n"))
    assert "unknown tier 'huge'" in message and "teams.a" in message


def test_model_without_price_is_an_error_never_free() -> None:
    text = VALID.replace("openai/gpt-4o-mini", "hosted_vllm/my-llama").replace(
        "      - model: hosted_vllm/my-llama\n", "      - model: hosted_vllm/my-llama\n        api_base: http://h/v1\n")
    message = _issue(text)
    assert "p.yaml:4: tiers.0.deployments.0.price:" in message and "no known price" in message


def test_provider_key_in_clear_is_refused() -> None:
    text = VALID + "model_list:\n  - model_name: m\n    litellm_params: {model: openai/gpt-4o, api_key: sk-live-123}\n"
    message = _issue(text)
    assert "os.environ/" in message and "sk-live-123" not in message


def test_litellm_model_list_is_accepted() -> None:
    text = VALID.replace(
        "  - name: big\n    deployments:\n      - model: openai/gpt-4o\n", "  - name: big\n    models: [gpt4o]\n"
    ) + ("model_list:\n  - model_name: gpt4o\n"
         "    litellm_params: {model: openai/gpt-4o, api_key: os.environ/OPENAI_API_KEY}\n")
    policy = parse_policy(text)
    assert policy.tiers[1].deployments[0].model == "openai/gpt-4o"
    assert policy.by_name["gpt4o"] == policy.tiers[1].deployments


def test_check_config_cli_exit_codes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(VALID.replace("name: big", "name: small"))
    run = run_cli(["check-config", str(bad)], cwd=ROOT)
    assert run.returncode == 1
    assert str(bad) in run.stderr and "is used twice" in run.stderr
    good = run_cli(["check-config", str(ROOT / "configs/demo.yaml")], cwd=ROOT)
    assert good.returncode == 0 and "ok" in good.stdout
