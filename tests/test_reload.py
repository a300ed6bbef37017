"""Hot reload: a valid change takes effect, an invalid one keeps the running policy, /readyz tells which."""

from __future__ import annotations

import hashlib
import signal
import time
from pathlib import Path

import httpx

from conftest import DEMO_KEYS, demo_config

AUTH = {"authorization": f"Bearer {DEMO_KEYS['research']}"}
CHAT = {"model": "mid", "messages": [{"role": "user", "content": "hi"}]}


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_bad_reload_keeps_serving_and_good_reload_applies(tmp_path: Path, start_proxy) -> None:
    config = demo_config(tmp_path)
    proxy = start_proxy(config)
    ready = httpx.get(proxy.url + "/readyz").json()
    original = config.read_bytes()
    assert ready["config"]["sha256"] == hashlib.sha256(original).hexdigest()

    config.write_text(original.decode() + "\nteams: [this is: not valid\n")
    proxy.proc.send_signal(signal.SIGHUP)
    assert _wait_for(lambda: httpx.get(proxy.url + "/readyz").json()["config"]["last_reload_error"])
    ready = httpx.get(proxy.url + "/readyz").json()
    assert ready["config"]["sha256"] == hashlib.sha256(original).hexdigest()
    assert "invalid YAML" in ready["config"]["last_reload_error"]
    assert httpx.post(proxy.url + "/v1/chat/completions", json=CHAT, headers=AUTH).status_code == 200

    # A valid edit (no SIGHUP: the file watcher notices): research may no longer use the mid tier.
    changed = original.decode().replace("  research:\n", "  research:\n    tiers: {floor: small, ceiling: small}\n", 1)
    config.write_text(changed)
    expected = hashlib.sha256(changed.encode()).hexdigest()
    assert _wait_for(lambda: httpx.get(proxy.url + "/readyz").json()["config"]["sha256"] == expected)
    resp = httpx.post(proxy.url + "/v1/chat/completions", json=CHAT, headers=AUTH)
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "tier_forbidden"
