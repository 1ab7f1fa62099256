"""hack/prometheus.sh: a real Prometheus that scrapes the targets a test registers and answers PromQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server

from tests.fixtures.polling import assert_eventually
from tests.fixtures.prometheus import Prometheus


@pytest.fixture
def exporter() -> Iterator[tuple[str, Counter]]:
    registry = CollectorRegistry()
    counter = Counter("aiplane_test_things_total", "Things counted by the test.", registry=registry)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"127.0.0.1:{server.server_port}", counter
    finally:
        server.shutdown()
        thread.join(10)


def test_registered_targets_are_scraped_and_queryable(prometheus: Prometheus, exporter: tuple[str, Counter]) -> None:
    address, counter = exporter
    counter.inc(7)
    target = prometheus.scrape(address, suite="hack")

    def seven() -> None:
        result = prometheus.query(f'aiplane_test_things_total{{instance="{address}"}}')
        assert result, "not scraped yet"
        assert float(result[0]["value"][1]) == 7.0
        assert result[0]["metric"]["suite"] == "hack"

    assert_eventually(seven, timeout=30)
    target.unlink()
