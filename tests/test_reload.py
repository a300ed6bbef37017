"""Hot reload: a valid change takes effect, an invalid one keeps the running policy, /readyz tells which (details to
an admin key only), restoring the running file clears the rejection, live settings apply at once and start-up-only
ones are reported as waiting for a restart."""

from __future__ import annotations

import asyncio
import hashlib
import signal
from pathlib import Path

import httpx

from proxy.runtime import PolicyStore, apply_server_settings, changed_settings
from tests.conftest import DEMO_KEYS, demo_config, mock_config
from tests.waiting import eventually
from upstream.base import Upstream
from upstream.dispatch import Dispatcher
from upstream.health import HealthBook
from upstream.pool import UpstreamPool

AUTH = {"authorization": f"Bearer {DEMO_KEYS['research']}"}
ADMIN = {"authorization": f"Bearer {DEMO_KEYS['admin']}"}
CHAT = {"model": "mid", "messages": [{"role": "user", "content": "hi"}]}


def _config(url: str, headers: dict[str, str] = ADMIN) -> dict:
    return httpx.get(url + "/readyz", headers=headers).json()["config"]


def test_bad_reload_keeps_serving_and_good_reload_applies(tmp_path: Path, start_proxy) -> None:
    config = demo_config(tmp_path, classifier="length")
    proxy = start_proxy(config, process=True)  # reloaded by SIGHUP
    original = config.read_bytes()
    running = hashlib.sha256(original).hexdigest()
    assert _config(proxy.url)["sha256"] == running

    config.write_text(original.decode() + "\nteams: [this is: not valid\n")
    proxy.proc.send_signal(signal.SIGHUP)
    eventually(lambda: _config(proxy.url)["last_reload_error"], "the invalid file reported", 10)
    ready = _config(proxy.url)
    assert ready["sha256"] == running
    assert "invalid YAML" in ready["last_reload_error"]
    assert httpx.post(proxy.url + "/v1/chat/completions", json=CHAT, headers=AUTH).status_code == 200
    # Without an admin key: ready and which config, nothing about the file or the error.
    for headers in ({}, AUTH):
        assert httpx.get(proxy.url + "/readyz", headers=headers).json() == {"status": "ready",
                                                                            "config": {"sha256": running}}

    # Restoring the running file (the watcher notices) withdraws the rejection.
    config.write_bytes(original)
    eventually(lambda: _config(proxy.url)["last_reload_error"] is None, "the rejection withdrawn", 10)
    assert _config(proxy.url)["sha256"] == running
    assert "is the running policy again" in proxy.output()

    # A valid edit (no SIGHUP: the file watcher notices): research may no longer use the mid tier.
    changed = original.decode().replace("  research:\n", "  research:\n    tiers: {floor: small, ceiling: small}\n", 1)
    config.write_text(changed)
    expected = hashlib.sha256(changed.encode()).hexdigest()
    eventually(lambda: _config(proxy.url)["sha256"] == expected, "the valid edit applied", 10)
    resp = httpx.post(proxy.url + "/v1/chat/completions", json=CHAT, headers=AUTH)
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "tier_forbidden"
    assert "applied: teams" in proxy.output()


def test_reload_applies_timeouts_live_and_reports_restart_only_settings(tmp_path: Path, start_mock,
                                                                         start_proxy) -> None:
    slow = start_mock("--latency-ms", "1000")  # 4x the reloaded timeout below, a fifth of the first
    config = _length_scored(mock_config(tmp_path, {"small": [slow.url]}))
    original = config.read_text()
    proxy = start_proxy(config)
    admin = {"authorization": "Bearer sk-test"}  # mock_config has no admin key: details come from the log below
    chat = {"model": "small", "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(proxy.url + "/v1/chat/completions", json=chat, headers=admin, timeout=30).status_code == 200

    def reload_to(text: str) -> None:
        config.write_text(text)
        digest = hashlib.sha256(text.encode()).hexdigest()
        eventually(lambda: _config(proxy.url, {})["sha256"] == digest, "the edit applied", 10)

    reload_to(original.replace("upstream_timeout_s: 5", "upstream_timeout_s: 0.25"))
    resp = httpx.post(proxy.url + "/v1/chat/completions", json=chat, headers=admin, timeout=30)
    assert resp.status_code == 504 and resp.json()["error"]["code"] == "upstream_timeout"
    assert "applied: server.upstream_timeout_s" in proxy.output()

    moved = original.replace("ledger.db", "other-ledger.db")
    reload_to(moved)
    assert "metering.ledger changed and requires restart" in proxy.output()
    assert httpx.post(proxy.url + "/v1/chat/completions", json=chat, headers=admin, timeout=30).status_code == 200
    assert (tmp_path / "ledger.db").exists() and not (tmp_path / "other-ledger.db").exists()  # old one in force


def _write(path: Path, text: str) -> None:
    path.write_text(text)


def _length_scored(config: Path) -> Path:
    """The length scorer: these tests are about reloads, not the ONNX model (which costs start-up time)."""
    config.write_text(config.read_text().replace("model: default", "model: length"))
    return config


def test_policy_store_reports_pending_restart_and_applies_server_settings(tmp_path: Path) -> None:
    """In process: the store's view for /readyz, and what the live listener changes in the long-lived objects."""
    config = _length_scored(mock_config(tmp_path, {"small": ["http://127.0.0.1:9"]}))
    original = config.read_text()
    store = PolicyStore.open(config)
    server = store.policy.config.server
    pool = UpstreamPool(server.upstream_timeout_s, server.connect_timeout_s)
    health = HealthBook(server.cooldown_after_failures, server.cooldown_s)
    dispatcher = Dispatcher(pool, health, server.max_attempts, server.retry_budget_s, server.upstream_timeout_s)
    store.on_reload.append(lambda policy: apply_server_settings(policy.config.server, pool, dispatcher, health))
    dep = store.policy.tiers[0].deployments[0]

    edited = (original.replace("  cooldown_s: 30", "  cooldown_s: 7\n  cooldown_after_failures: 1\n  max_attempts: 1")
              .replace("ledger.db", "elsewhere.db").replace("model: length", "model: default"))
    _write(config, edited)
    assert store.reload()
    assert changed_settings(store.started, store.policy.config) == [
        "server.max_attempts", "server.cooldown_after_failures", "server.cooldown_s", "metering.ledger",
        "classifier.model"]
    assert store.pending_restart == ["metering.ledger", "classifier.model"]
    assert (health.failures_to_cooldown, health.cooldown_s) == (1, 7)
    health.failure(dep.id)  # one failure now cools the deployment down
    assert not health.snapshot().healthy(dep.id)
    assert dispatcher._plan((dep, dep, dep)) == (dep,)  # max_attempts: 1

    async def timeout_reloaded() -> tuple[Upstream, Upstream]:
        """An HTTP client is built inside a running loop."""
        before = pool.get(dep)
        _write(config, edited.replace("upstream_timeout_s: 5", "upstream_timeout_s: 9"))
        assert store.reload()
        after = pool.get(dep)
        await pool.close()
        return before, after

    before, after = asyncio.run(timeout_reloaded())
    assert after is not before  # rebuilt with the new timeout

    _write(config, original + "\nnot: [valid\n")
    assert not store.reload() and store.last_error
    _write(config, original)
    assert store.reload() and store.pending_restart == [] and store.last_error is None
    _write(config, original + "\nnot: [valid\n")
    assert not store.reload()
    _write(config, original)  # the running file again: the rejection no longer applies
    assert store.reload() and store.last_error is None
