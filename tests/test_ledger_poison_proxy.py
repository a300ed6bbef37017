"""Issue 11, item 1, end to end: a proxy process on the PostgreSQL ledger keeps committing and reporting after the
reproduction's poison records, both ones left in its spool by an earlier process and ones sent as requests.

The requests' NUL tag and 9,000-character tag header may be refused at the edge with a 400 (tag validation); if
they are answered, the ledger must set them aside. The spool's poison line always reaches the ledger.
"""

from __future__ import annotations

import secrets
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from metering.ledger.dead_letter import DeadLetterFile
from tests.conftest import POSTGRES_DSN, require_service
from tests.metering_fixtures import make_record, pg_schema  # noqa: F401  (fixture)
from tests.proxy_metering_helpers import chat, new_team, postgres_up, totals, write_config

SECRET = "sk-live-" + secrets.token_hex(8)  # in every poison tag; must never reach the proxy's log


def test_poison_records_do_not_stop_the_postgres_ledger(tmp_path: Path, pg_schema: str, start_mock: Any,
                                                        start_proxy: Any) -> None:
    require_service("PostgreSQL", postgres_up(POSTGRES_DSN), POSTGRES_DSN)
    team = new_team("poison")
    mock = start_mock()
    config = write_config(tmp_path / "c.yaml", {"small": [mock.url]}, [team], POSTGRES_DSN)
    data = yaml.safe_load(config.read_text())
    spool = tmp_path / "spool"
    data["metering"].update(ledger_schema=pg_schema, spool_dir=str(spool))
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    # A dead process's spool: the reproduction's NUL tag between two good records (restart half of the issue).
    now = datetime.now(UTC)
    planted = [make_record(i, request_id=f"planted-{i}", team=team.name, started_at=now, ended_at=now,
                           cost_nanos=1_000, tags=tags)
               for i, tags in enumerate([{}, {"owner": f"a\u0000b{SECRET}"}, {}])]
    spool.mkdir()
    (spool / "1-dead-0000000001.spool").write_bytes(
        b"".join(f"dead-{i} ".encode() + r.to_json() + b"\n" for i, r in enumerate(planted)))

    # A process: its exit status is checked. Ready only once start-up (with its bounded replay) is done.
    proxy = start_proxy(config, process=True)

    def post(body: dict, **headers: str) -> httpx.Response:
        return httpx.post(proxy.url + "/v1/chat/completions", json=body, headers={**team.auth, **headers},
                          timeout=30)

    nul = post(chat("hi", max_tokens=8, metadata={"owner": f"a\u0000b{SECRET}"}))
    huge = post(chat("hi", max_tokens=8), **{"x-tiergate-tag-owner": SECRET + secrets.token_hex(4496)})
    assert nul.status_code in (200, 400), nul.text
    assert huge.status_code in (200, 400), huge.text
    answered = [r.headers["x-request-id"] for r in (nul, huge) if r.status_code == 200]
    later = [post(chat(f"later {i}", max_tokens=8)) for i in range(3)]
    assert [r.status_code for r in later] == [200, 200, 200]

    tot = totals(proxy.url, team.name)  # /v1/spend/report flushes the ledger first: 503 if it were stuck
    assert tot["requests"] == 2 + 3  # the planted good records and the later requests; poison set aside

    dead = DeadLetterFile(f"{spool}.dead-letter.jsonl").read()
    assert sorted(e["request_id"] for e in dead) == sorted(["planted-1", *answered])
    assert all(e["sqlstate"] in ("22P05", "54000") for e in dead)
    proxy.stop()
    assert proxy.proc.returncode != -signal.SIGKILL, "the proxy had to be killed: shutdown did not finish"
    log = proxy.output()
    assert "planted-1" in log  # the dead-letter line names the request ...
    assert SECRET not in log  # ... never its tag values
