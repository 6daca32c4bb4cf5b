"""The health gate: the app answers, systemd says active, and it stays up (no fixed sleeps).

Polls fast at first (the outage is the restart, so every millisecond counts), backing off to a
few polls a second; then watches a short settle window for a restart loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from nesop_deb.errors import NesopError
from nesop_deb.runtime import httpget, service
from nesop_deb.runtime.log import log

SETTLE_SECONDS = 1.0
STATUS_EVERY = 0.1  # seconds between systemd status reads while waiting for the app
PROBE_TIMEOUT = 2.0  # seconds a health probe waits for an answer, at most
FIRST_PROBE_TIMEOUT = 0.25  # ... at first (doubled after each probe that ran out of time)


class HealthError(NesopError):
    """The app did not become healthy."""


@dataclass(frozen=True)
class Probe:
    ok: bool
    detail: str


def probe(url: str, timeout: float = 2.0) -> Probe:
    """One GET of ``url``: 2xx is healthy. It takes at most ``timeout`` s, however the app answers."""
    try:
        answer = httpget.get(url, timeout)
    except httpget.NoAnswer as exc:
        return Probe(False, exc.message)
    if 200 <= answer.status < 300:
        return Probe(True, f"HTTP {answer.status}")
    return Probe(False, f"HTTP {answer.status}: {answer.body.strip()[:200]}")


def wait_healthy(
    unit: str, url: str | None, timeout: float, *, restarts_before: int | None = None, settle: bool = True
) -> float:
    """Block until healthy; return the seconds it took. Raise :class:`HealthError` otherwise.

    ``settle=False`` skips the watch for a restart loop: for an app that has been up all along."""
    start = time.monotonic()
    deadline = start + timeout
    baseline = service.status(unit).restarts if restarts_before is None else restarts_before
    delay = 0.01
    last = "not checked yet"
    ask_systemd = start  # when systemd is asked next; an answer from the app asks it at once
    # A socket unit accepts every connection, so a probe of an app that is not up (yet, or any
    # more) waits instead of being refused: probes start short, so that systemd is asked often
    # and an app that dies is seen at once, and grow for an app that answers slowly.
    probe_timeout = FIRST_PROBE_TIMEOUT
    first_pid = 0
    while True:
        # The HTTP probe is cheap; `systemctl show` is a process and a D-Bus call that compete
        # with the starting app for the CPUs, so systemd is asked every STATUS_EVERY seconds, or
        # as soon as the app answers (to confirm it is the unit's process, not restarting).
        answered = None
        if url is not None:
            asked = time.monotonic()
            result = probe(url, probe_timeout)
            last, answered = result.detail, result.ok
            if not result.ok and time.monotonic() - asked >= probe_timeout * 0.9:
                probe_timeout = min(probe_timeout * 2, PROBE_TIMEOUT)
        if answered is not False or time.monotonic() >= ask_systemd:
            ask_systemd = time.monotonic() + STATUS_EVERY
            st = service.status(unit)
            first_pid = first_pid or st.main_pid
            # a new main process without a restart counted: its socket started it again
            again = st.main_pid not in (0, first_pid)
            if st.restarts > baseline or st.active_state == "failed" or again:
                raise HealthError(
                    f"{unit} failed to start ({st.active_state}/{st.sub_state}, "
                    f"restarted {st.restarts - baseline}x"
                    f"{f', pid {first_pid} -> {st.main_pid}' if again else ''})",
                    hint=f"its log says: {service.journal_tail(unit)}",
                )
            if st.active and answered is not False:
                break
            if not st.active:
                last = f"{unit} is {st.active_state}/{st.sub_state}"
        if time.monotonic() >= deadline:
            raise HealthError(f"{url or unit} not healthy after {timeout:g} s: {last}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)
    ready = time.monotonic() - start
    if settle:
        _settle(unit, url, service.status(unit))
    log.info("healthy after %.3f s (%s)", ready, last if url else "active")
    return ready


def _settle(unit: str, url: str | None, first: service.ServiceStatus) -> None:
    """The app must stay up: same MainPID, no restart, health still 2xx over a short window."""
    end = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < end:
        time.sleep(0.2)
        st = service.status(unit)
        if not st.active or st.main_pid != first.main_pid or st.restarts != first.restarts:
            raise HealthError(
                f"{unit} did not stay up (now {st.active_state}/{st.sub_state}, "
                f"pid {first.main_pid} -> {st.main_pid})",
                hint=f"its log says: {service.journal_tail(unit)}",
            )
        if url is not None:
            result = probe(url)
            if not result.ok:
                raise HealthError(f"{url} stopped answering after the restart: {result.detail}")
