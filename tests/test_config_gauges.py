"""``/metrics``'s config gauges, rendered the way a scrape renders them: the active policy's sha256 and whether the
last reload was rejected (the fleet test reads them from a running replica)."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.metrics import Metrics, config_gauges


@pytest.mark.parametrize("rejected", [False, True])
def test_a_scrape_shows_the_active_sha256_and_whether_the_last_reload_was_rejected(rejected: bool) -> None:
    text = Metrics().render(config_gauges("ab" * 32, rejected)).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("tiergate_config_info", (("sha256", "ab" * 32),))] == 1
    assert samples[("tiergate_config_reload_rejected", ())] == (1 if rejected else 0)
