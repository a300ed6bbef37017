"""``tiergate learn --team`` and ``tiergate calibrate --team`` against a policy's (SQLite) ledger.

learn --team registers the team's candidate and promotes it through the gate; calibrate --team prints the highest
threshold at which the team's serving model keeps judged quality at the target share of the ceiling tier's, which
is checked by routing the same judged rows at that threshold.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import yaml

from classifiers.learn import read_outcomes
from classifiers.promotion import model_inputs
from classifiers.scorer import ComplexityScorer
from metering.ledger import open_ledger
from proxy.cli import main
from tests.conftest import demo_config
from tests.test_learn_features_only import _features_only, _rows, _write


def _rows_of(team: str, n: int) -> list[dict]:
    rows = [_features_only(r) for r in _rows(n)]
    for r in rows:
        r["meta"]["team"] = team
    return rows


def test_learn_team_promotes_and_calibrate_team_meets_the_target(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = demo_config(tmp_path)
    outcomes = _write(tmp_path / "export.jsonl", _rows_of("research", 480) + _rows_of("other", 60))
    assert main(["learn", "--team", "research", "--config", str(config), "--outcomes", str(outcomes)]) == 0
    out = capsys.readouterr().out
    assert "registered v1" in out and "PROMOTED" in out and "on 120 newest of 480 rows" in out

    async def active() -> dict:
        ledger = open_ledger(f"sqlite:///{tmp_path}/ledger.db", spool_dir=None)
        await ledger.start()
        try:
            return {"active": await ledger.active_routing_models(),
                    "bytes": await ledger.routing_model_bytes("research", 1)}
        finally:
            await ledger.close()

    state = asyncio.run(active())
    assert state["active"]["research"][0] == 1

    assert main(["calibrate", "--team", "research", "--target-quality", "0.95", "--config", str(config),
                 "--data", str(outcomes), "--tier", "frontier"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("# team research, v1")
    threshold = yaml.safe_load(printed)["routing"]["thresholds"]["frontier"]
    data = read_outcomes(_write(tmp_path / "research.jsonl", _rows_of("research", 480)))
    scorer = ComplexityScorer(state["bytes"])
    scores = scorer.probabilities(model_inputs(scorer, data))
    routed = np.where(scores >= threshold, data.strong, data.weak)
    assert routed.mean() >= 0.95 * data.strong.mean()
    assert np.mean(scores >= threshold) < 1.0  # cheaper than always-frontier
    # The next higher threshold (one fewer strong call group) would miss the target: it is the cheapest.
    above = np.sort(np.unique(scores[scores >= threshold]))
    if len(above) > 1:
        routed_higher = np.where(scores >= above[1], data.strong, data.weak)
        assert routed_higher.mean() < 0.95 * data.strong.mean()


def test_team_flags_need_a_config_and_give_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["learn", "--team", "research"]) == 2
    assert "--team needs --config" in capsys.readouterr().err
    assert main(["learn"]) == 2
    assert "--outcomes and --out required" in capsys.readouterr().err
    config = demo_config(tmp_path)
    assert main(["learn", "--team", "nobody", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "tiergate learn: no judged rows for team 'nobody'"
    assert main(["calibrate", "--team", "nobody", "--config", str(config), "--target-strong-share", "0.2"]) == 2
    assert "--team needs --target-quality" in capsys.readouterr().err
