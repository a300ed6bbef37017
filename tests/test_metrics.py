"""Prometheus ``/metrics``: after N requests through two worker processes the counters equal the ledger's totals
(``/v1/spend/report``) exactly, whichever worker answers the scrape; money to the nano-dollar.

Also, in process: observing records (nano-dollar exactness, what is and is not counted) and the supervisor's
multiprocess directory handling.
"""

from __future__ import annotations

import os
import re
import shutil
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from metering.record import UsageRecord
from pipeline.errors import TiergateError
from proxy.errors import wire
from proxy.metrics import MULTIPROC_ENV, Metrics, check_access
from proxy.server import _prepare_metrics_dir
from router.config_loader import ConfigError, parse_policy
from router.policy import Policy
from tests.conftest import DEMO_KEYS, ROOT, Process, demo_config
from tests.fault_harness import worker_pids
from tests.waiting import eventually

ADMIN = {"authorization": f"Bearer {DEMO_KEYS['admin']}"}
SAMPLE_LINE = re.compile(r"^(?P<name>[a-z_]+)\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
NANOS = Decimal(1_000_000_000)
ROUNDS = 12
STREAMS = sum(1 for i in range(ROUNDS) if i % 3 == 0)  # support streams every third round


def _scrape(proxy: Process) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """``{sample name: {sorted labels: value}}`` of one scrape."""
    response = httpx.get(proxy.url + "/metrics", headers=ADMIN, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return out


def _by_team(samples: dict[tuple[tuple[str, str], ...], float], nanos: bool = False) -> dict[str, int]:
    """Per team: counts, or (``nanos``) USD converted back to integer nano-dollars series by series."""
    totals: dict[str, int] = defaultdict(int)
    for labels, value in samples.items():
        totals[dict(labels)["team"]] += round(value * 1e9) if nanos else int(value)
    return dict(totals)


def _nanos(usd: str) -> int:
    return int(Decimal(usd) * NANOS)


def _traffic(proxy: Process) -> int:
    """Mixed teams, tiers and a stream, each request on a new connection (so the kernel spreads them)."""
    sent = 0
    for i in range(ROUNDS):
        for team, model, stream in (("research", "auto", False), ("research", ("mid", "frontier")[i % 2], False),
                                    ("support", "auto", i % 3 == 0)):
            body = {"model": model, "stream": stream,
                    "messages": [{"role": "user", "content": f"Question {i}: explain the trade-offs of caching"}]}
            response = httpx.post(proxy.url + "/v1/chat/completions", json=body, timeout=60,
                                  headers={"authorization": f"Bearer {DEMO_KEYS[team]}"})
            assert response.status_code == 200, response.text
            sent += 1
    return sent


def _requests_per_worker(proxy: Process, tmp_path: Path) -> dict[int, int]:
    """Requests counted by each worker process, read from its own multiprocess file."""
    workers = [Path(f"/proc/{pid}") for pid in worker_pids(proxy.proc.pid)]
    environ = {}
    for worker in workers:
        for entry in (worker / "environ").read_bytes().split(b"\0"):
            name, _, value = entry.decode(errors="replace").partition("=")
            if name == MULTIPROC_ENV:
                environ[int(worker.name)] = value
    assert len(set(environ.values())) == 1, environ  # every worker shares one directory
    directory = Path(next(iter(environ.values())))
    counts = {}
    for pid in environ:
        one = tmp_path / f"worker-{pid}"
        one.mkdir()
        shutil.copy(directory / f"counter_{pid}.db", one)
        counts[pid] = sum(int(s.value) for m in MultiProcessCollector(None, str(one)).collect()
                          for s in m.samples if s.name == "tiergate_requests_total")
    return counts


def _listening(port: int) -> int:
    """Sockets listening on ``port``: a worker listens only once its start-up is done (``proxy.server``), and
    ``/readyz`` answering means one has."""
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return sum(1 for row in rows if row[1].endswith(f":{port:04X}") and row[3] == "0A")  # 0A: LISTEN


def test_counters_equal_the_ledger_with_two_workers(start_proxy: Any, tmp_path: Path) -> None:
    # the length classifier: ~0.2 s less start-up per worker than the ONNX model, and no counter depends on it
    proxy = start_proxy(demo_config(tmp_path, classifier="length"), workers=2)
    # both workers must take requests (each is checked below): under load the second may still be starting
    eventually(lambda: _listening(proxy.port) == 2, "both workers listening", proc=proxy.proc)
    sent = _traffic(proxy)

    def complete() -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        report = httpx.get(proxy.url + "/v1/spend/report", headers=ADMIN, timeout=30).json()
        scrapes = [_scrape(proxy) for _ in range(6)]
        counted = [sum(s["tiergate_requests_total"].values()) for s in scrapes]
        return (report, scrapes) if report["totals"]["requests"] == sent and counted == [sent] * len(scrapes) else None

    # streams settle just after their last byte: wait until ledger and counters have every request
    report, scrapes = eventually(complete, f"{sent} requests in the ledger and in every scrape", proc=proxy.proc)

    rows = {row["team"]: row for row in report["rows"]}
    assert set(rows) == {"research", "support"}
    for scrape in scrapes:  # the same totals whichever worker answered
        assert _by_team(scrape["tiergate_requests_total"]) == {t: r["requests"] for t, r in rows.items()}
        assert _by_team(scrape["tiergate_input_tokens_total"]) == {t: r["prompt_tokens"] for t, r in rows.items()}
        assert _by_team(scrape["tiergate_output_tokens_total"]) == {t: r["completion_tokens"] for t, r in rows.items()}
        assert _by_team(scrape["tiergate_cost_usd_total"], nanos=True) == {
            t: _nanos(r["cost_usd"]) for t, r in rows.items()}
        assert _by_team(scrape["tiergate_baseline_cost_usd_total"], nanos=True) == {
            t: _nanos(r["counterfactual_cost_usd"]) for t, r in rows.items()}
        assert _by_team(scrape["tiergate_savings_usd_total"], nanos=True) == {
            t: _nanos(r["savings_usd"]) for t, r in rows.items()}
        assert sum(scrape["tiergate_request_duration_seconds_count"].values()) == sent
        assert sum(scrape["tiergate_time_to_first_token_seconds_count"].values()) == STREAMS

    tiers = {dict(labels)["tier"] for labels in scrapes[0]["tiergate_requests_total"]}
    assert {"mid", "frontier"} <= tiers
    budget = scrapes[-1]["tiergate_budget_utilisation_ratio"]
    day = budget[(("period", "day"), ("team", "research"))]
    assert day == pytest.approx(_nanos(rows["research"]["cost_usd"]) / 25e9, rel=1e-9)  # demo cap: $25/day
    per_worker = _requests_per_worker(proxy, tmp_path)
    assert len(per_worker) == 2 and all(n > 0 for n in per_worker.values()), per_worker
    assert sum(per_worker.values()) == sent
    assert "sk-demo" not in httpx.get(proxy.url + "/metrics", headers=ADMIN, timeout=10).text
    # every team's spend is there: no key, a team key or a wrong key sees none of it
    assert httpx.get(proxy.url + "/metrics", timeout=10).json()["error"]["code"] == "missing_api_key"
    team = httpx.get(proxy.url + "/metrics", headers={"authorization": f"Bearer {DEMO_KEYS['research']}"}, timeout=10)
    assert team.status_code == 403 and team.json()["error"]["code"] == "admin_key_required"
    assert httpx.get(proxy.url + "/metrics", headers={"authorization": "Bearer nope"}, timeout=10).status_code == 401


def _record(**fields: Any) -> UsageRecord:
    now = datetime.now(UTC)
    base: dict[str, Any] = dict(request_id="r", started_at=now, ended_at=now, team="t", key_id="k",
                                requested_model="auto", model="m", status=200, tier="small", latency_ms=120)
    return UsageRecord(**{**base, **fields})


def test_observe_counts_exact_nano_dollars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    metrics = Metrics()
    for _ in range(10):  # 0.1 USD + 0.000000001: ten float additions of the USD value would not be exact
        metrics.observe(_record(cost_nanos=100_000_001, counterfactual_cost_nanos=300_000_000, prompt_tokens=7))
    metrics.observe(_record(cost_nanos=5, counterfactual_cost_nanos=2, ttft_ms=250), sticky_held=True)
    metrics.observe(_record(status=502, model=""))
    text = metrics.render().decode()
    values = {}
    for line in text.splitlines():
        match = SAMPLE_LINE.match(line)
        if match:
            values[(match["name"], match["labels"])] = float(match["value"])
    labels = 'model="m",team="t",tier="small"'
    assert round(values[("tiergate_cost_usd_total", labels)] * 1e9) == 10 * 100_000_001 + 5
    assert round(values[("tiergate_baseline_cost_usd_total", labels)] * 1e9) == 3_000_000_002
    # the one request that cost more than its baseline adds nothing to savings (a counter cannot go down)
    assert round(values[("tiergate_savings_usd_total", labels)] * 1e9) == 10 * 199_999_999
    assert values[("tiergate_input_tokens_total", labels)] == 70
    assert values[("tiergate_requests_total", 'model="m",status="200",team="t",tier="small"')] == 11
    assert values[("tiergate_requests_total", 'model="",status="502",team="t",tier="small"')] == 1
    assert values[("tiergate_time_to_first_token_seconds_count", labels)] == 1
    assert values[("tiergate_sticky_held_requests_total", 'team="t",tier="small"')] == 1
    assert values[("tiergate_request_duration_seconds_count", labels)] == 11


def test_metrics_directory_is_emptied_or_made_fresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    chosen = tmp_path / "chosen"
    chosen.mkdir()
    (chosen / "counter_1.db").write_bytes(b"stale")
    monkeypatch.setenv(MULTIPROC_ENV, str(chosen))
    assert _prepare_metrics_dir(workers=4) is None  # the operator's directory is kept ...
    assert list(chosen.iterdir()) == []  # ... but an earlier run's counters are gone

    monkeypatch.delenv(MULTIPROC_ENV)
    assert _prepare_metrics_dir(workers=1) is None and MULTIPROC_ENV not in os.environ
    made = _prepare_metrics_dir(workers=2)
    assert made is not None and os.environ[MULTIPROC_ENV] == made and list(Path(made).iterdir()) == []
    shutil.rmtree(made)


def _policy_with(metrics: str | None) -> Policy:
    text = (ROOT / "configs" / "demo.yaml").read_text()
    if metrics is not None:
        text = text.replace("server:\n", f"server:\n  metrics: {metrics}\n", 1)
    return parse_policy(text, "demo.yaml")


def _refusal(policy: Policy, headers: dict[str, str]) -> tuple[int, str | None] | None:
    """``check_access``'s answer: None when the scrape may proceed, else (status, code)."""
    try:
        check_access(policy.config.server.metrics, policy, headers)
    except TiergateError as exc:
        return wire(exc).status, wire(exc).code
    return None


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_metrics_need_an_admin_key_by_default() -> None:
    policy = _policy_with(None)
    assert _refusal(policy, {}) == (401, "missing_api_key")
    assert _refusal(policy, _bearer("sk-nope")) == (401, "invalid_api_key")
    assert _refusal(policy, _bearer(DEMO_KEYS["research"])) == (403, "admin_key_required")
    assert _refusal(policy, _bearer(DEMO_KEYS["admin"])) is None


def test_metrics_scrape_token_and_open_access(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = _policy_with("{auth: bearer_token, token_env: TG_TEST_SCRAPE}")
    monkeypatch.delenv("TG_TEST_SCRAPE", raising=False)
    assert _refusal(policy, _bearer("s3cret")) == (503, "metrics_token_unset")  # fails closed, never open
    monkeypatch.setenv("TG_TEST_SCRAPE", "s3cret")
    assert _refusal(policy, _bearer("s3cret")) is None
    assert _refusal(policy, {}) == (401, "missing_api_key")
    assert _refusal(policy, _bearer("s3cre")) == (401, "invalid_api_key")
    assert _refusal(policy, _bearer(DEMO_KEYS["admin"])) == (401, "invalid_api_key")  # the token, not any key
    assert _refusal(_policy_with("{auth: none}"), {}) is None


@pytest.mark.parametrize("metrics", ["{auth: bearer_token}", "{auth: admin_key, token_env: X}", "{auth: open}"])
def test_metrics_access_config_errors_name_the_field(metrics: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _policy_with(metrics)
    assert "server.metrics" in str(caught.value)
