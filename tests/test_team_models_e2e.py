"""A running proxy hot-swaps a team's routing model without a restart, and a rollback swaps it back.

``tiergate serve`` on the demo policy (simulated upstreams, SQLite ledger); ``tiergate learn --team research``, a
separate process, registers and promotes a model learned from the team's judged rows; the worker picks it up by
polling the ledger (no restart, same process id; every 0.2 s here, set by ``TIERGATE_TEAM_MODELS_POLL_S``), so the
same request gets a different ``x-tiergate-score``; the admin API lists it as active and served;
``POST .../rollback`` restores the default score at once. Other teams keep the default model throughout.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from proxy.cli import main
from proxy.runtime import TEAM_MODELS_POLL_ENV, TEAM_MODELS_POLL_S, team_models_poll_s
from tests.conftest import demo_config
from tests.test_learn_features_only import _features_only, _rows, _write
from tests.waiting import eventually

RESEARCH = {"Authorization": "Bearer sk-demo-research"}
SUPPORT = {"Authorization": "Bearer sk-demo-support"}
ADMIN = {"Authorization": "Bearer sk-demo-admin"}
BODY = {"model": "auto", "messages": [{"role": "user", "content": "Please summarise: detail0 of item 3"}]}


def _score(url: str, headers: dict) -> str:
    response = httpx.post(url + "/v1/chat/completions", json=BODY, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.headers["x-tiergate-score"]


def test_promoted_model_is_served_without_restart_and_rollback_restores(tmp_path: Path, start_proxy) -> None:
    config = demo_config(tmp_path)
    # the pid must stay the same across the swap; the worker polls the ledger every 0.2 s instead of every 10 s
    proxy = start_proxy(config, env={TEAM_MODELS_POLL_ENV: "0.2"}, process=True)
    pid = proxy.proc.pid
    before, other_before = _score(proxy.url, RESEARCH), _score(proxy.url, SUPPORT)

    rows = [_features_only(r) for r in _rows(480)]
    for r in rows:
        r["meta"]["team"] = "research"
    assert main(["learn", "--team", "research", "--config", str(config),
                 "--outcomes", str(_write(tmp_path / "export.jsonl", rows))]) == 0

    # The worker picks it up at its next poll of the ledger; no speed is asserted, only the swap.
    after = eventually(lambda: (score := _score(proxy.url, RESEARCH)) != before and score,
                       "the promoted model's score", 60, proxy.proc)
    assert after != before
    assert proxy.proc.pid == pid and proxy.proc.poll() is None
    assert _score(proxy.url, SUPPORT) == other_before

    listed = httpx.get(proxy.url + "/v1/routing/models/research", headers=ADMIN, timeout=10).json()
    assert listed["active_version"] == 1
    assert listed["serving_model_id"] == listed["models"][0]["model_id"]
    assert listed["models"][0]["metrics"]["n_holdout"] == 120

    rolled = httpx.post(proxy.url + "/v1/routing/models/research/rollback", headers=ADMIN, timeout=10)
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["restored_version"] is None and rolled.json()["active_version"] is None
    assert _score(proxy.url, RESEARCH) == before
    assert [m["status"] for m in rolled.json()["models"]] == ["retired"]


def test_models_api_refuses_what_it_cannot_do(tmp_path: Path, start_proxy) -> None:
    proxy = start_proxy(demo_config(tmp_path))
    base = proxy.url + "/v1/routing/models/"
    team_key = httpx.get(base + "research", headers=RESEARCH, timeout=10)
    assert team_key.status_code == 403 and team_key.json()["error"]["code"] == "admin_key_required"
    unknown = httpx.get(base + "nobody", headers=ADMIN, timeout=10)
    assert unknown.status_code == 404 and "nobody" in unknown.json()["error"]["message"]
    nothing = httpx.post(base + "research/rollback", headers=ADMIN, timeout=10)
    assert nothing.status_code == 404 and "no active routing model" in nothing.json()["error"]["message"]
    no_rows = httpx.post(base + "research/retrain", headers=ADMIN, timeout=10)
    assert no_rows.status_code == 400 and "no judged rows" in no_rows.json()["error"]["message"]
    bad = httpx.post(base + "research/retrain", headers=ADMIN, content=b"{", timeout=10)
    assert bad.status_code == 400
    listed = httpx.get(base + "research", headers=ADMIN, timeout=10).json()
    assert listed["models"] == [] and listed["active_version"] is None


def test_team_models_poll_period_is_a_positive_number_of_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    """``TIERGATE_TEAM_MODELS_POLL_S`` sets how often a worker polls the ledger for promoted models: unset or empty
    is the default, anything but a positive number of seconds stops the worker's start naming the variable."""
    monkeypatch.delenv(TEAM_MODELS_POLL_ENV, raising=False)
    assert team_models_poll_s() == TEAM_MODELS_POLL_S == 10.0
    for value, seconds in (("", TEAM_MODELS_POLL_S), (" 0.25 ", 0.25), ("30", 30.0)):
        monkeypatch.setenv(TEAM_MODELS_POLL_ENV, value)
        assert team_models_poll_s() == seconds
    for bad in ("0", "-1", "nan", "inf", "ten"):
        monkeypatch.setenv(TEAM_MODELS_POLL_ENV, bad)
        with pytest.raises(ValueError, match=f"{TEAM_MODELS_POLL_ENV} must be a positive number of seconds"):
            team_models_poll_s()
