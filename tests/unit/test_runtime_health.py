"""The health gate against a real HTTP server and systemd behind the subprocess seam: it asks
systemd rarely while the app is not answering yet, at once when it answers, and still catches a
unit that failed or restarted."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nesop_deb.runtime import health
from tests.unit.runtime_fixtures import UNIT, Server, fake_server


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    yield from fake_server(tmp_path, monkeypatch)


def _shows(server: Server) -> int:
    return sum(1 for c in server.systemd.calls if c[:2] == ["systemctl", "show"])


def test_the_app_starting_is_probed_over_http_and_systemd_is_asked_rarely(server: Server) -> None:
    ready_at = time.monotonic() + 0.6
    probes: list[float] = []

    def decide() -> int:
        probes.append(time.monotonic())
        return 200 if time.monotonic() >= ready_at else 503

    url = server.serve_health(decide)

    took = health.wait_healthy(UNIT, url, timeout=10, restarts_before=0)

    assert 0.55 < took < 2
    shows = _shows(server)
    assert len(probes) > shows, (len(probes), shows)
    assert shows <= took / health.STATUS_EVERY + 3  # the one when it answered, and the baseline's


def test_a_unit_that_fails_while_the_app_never_answers_is_caught_within_a_status_period(
    server: Server,
) -> None:
    url = server.serve_health(lambda: 503)
    unit = server.systemd.units[UNIT]
    unit.active, unit.sub = "failed", "failed"
    started = time.monotonic()

    with pytest.raises(health.HealthError, match="failed to start"):
        health.wait_healthy(UNIT, url, timeout=10, restarts_before=0)

    assert time.monotonic() - started < 1


def test_an_answer_from_a_unit_that_restarted_is_not_healthy(server: Server) -> None:
    url = server.serve_health(lambda: 200)
    server.systemd.units[UNIT].restarts = 1

    with pytest.raises(health.HealthError, match="restarted 1x"):
        health.wait_healthy(UNIT, url, timeout=10, restarts_before=0)
