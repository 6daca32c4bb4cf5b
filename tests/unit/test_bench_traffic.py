"""The requests benchmark's bookkeeping: the journal read into outages, app processes and the gate,
requests counted per operation, the goals; and the releases made again without the socket unit."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from bench import server, socketless, traffic
from bench.clients import Request
from nesop_deb.config import loads as load_config
from tests.e2e import store

UNIT = store.UNIT
T0 = 1_800_000_000.0


def entry(t: float, message: str, *, pid: int = 4242, unit: str = UNIT) -> server.Entry:
    return server.Entry(T0 + t, pid, unit, message)


def systemd(t: float, message: str) -> server.Entry:
    return entry(t, message, pid=1)


def runtime(t: float, step: str) -> server.Entry:
    return entry(t, f"2026-01-01T00:00:00+0000 INFO   -> {step}", pid=900, unit="session-1.scope")


def listening(t: float, pid: int) -> server.Entry:
    return entry(
        t, f"[2026-01-01 00:00:00 +0000] [{pid}] [INFO] Listening at: http://127.0.0.1:5000 ({pid})", pid=pid
    )


def req(
    start: float, seconds: float, result: str = "ok", detail: str = "", client: str = "fresh-1"
) -> Request:
    return Request(client, T0 + start, seconds, result, detail)


def op(kind: str = "update", start: float = 0.0, end: float = 10.0) -> traffic.Op:
    return traffic.Op(kind, 0, traffic.KINDS[kind], T0 + start, T0 + end - 1, T0 + end, 0, "active/listening")


# an update: stop at 1.0 (gate closed), the old master stops, the new one is started at 2.0 when
# the runtime's start step opens the gate, serves from 2.3
UPDATE = [
    runtime(1.0, "stop"),
    systemd(1.01, "Stopping nesop-store.service - NESOP Store web shop..."),
    systemd(1.2, "Stopped nesop-store.service - NESOP Store web shop."),
    entry(1.5, "nesop-update gate: an update holds the app; this start waits"),
    runtime(1.6, "apply-files"),
    runtime(2.0, "start"),
    entry(2.01, "nesop-update gate: open"),
    systemd(2.05, "Started nesop-store.service - NESOP Store web shop."),
    listening(2.3, 5001),
    runtime(2.4, "health"),
]


def test_an_update_read_from_the_journal_and_the_requests() -> None:
    reqs = [
        req(0.5, 0.01),
        req(0.9, 0.05),
        req(1.1, 1.3),  # queued on the socket while the app was down, answered by the new master
        req(2.5, 0.02),
        req(3.0, 0.01, "status", "503"),
    ]
    stats = traffic.analyze(op(), reqs, 2, UPDATE)
    assert (stats.requests, stats.served, stats.failures) == (5, 4, {"non-2xx 503": 1})
    assert stats.idle_lost == 2
    assert (stats.processes, stats.starts, stats.before_gate, stats.gate_waits) == (1, 1, 0, 1)
    assert abs(stats.held - 1.0) < 1e-6, "held from the runtime's stop step to its start step"
    assert stats.outage is not None and abs(stats.outage - (2.4 - 1.01)) < 1e-6
    assert stats.longest == 1.3 and stats.p50 == 0.02 and stats.p99 == 1.3
    assert stats.examples == ["fresh-1 at +3.000 s: non-2xx 503 after 10 ms"]


def test_a_gate_of_its_own_says_so_in_its_own_unit() -> None:
    own = [e for e in UPDATE if "nesop-update gate" not in e.message]
    own.append(entry(1.5, "nesop-update gate: an update holds nesop-store.service; its start waits",
                     unit=traffic.GATE_UNIT))  # fmt: skip
    own.append(systemd(1.4, "Starting nesop-update-gate@nesop-store.service - Hold nesop-store.service"))
    assert traffic.GATE_UNIT == "nesop-update-gate@nesop-store.service"
    assert traffic.analyze(op(), [req(2.5, 0.01)], 0, own).gate_waits == 1


def test_a_start_while_the_gate_is_held_is_counted() -> None:
    early = [
        *UPDATE,
        systemd(1.55, "Started nesop-store.service - NESOP Store web shop."),
        listening(1.7, 4999),
    ]
    stats = traffic.analyze(op(), [req(2.5, 0.01)], 0, early)
    assert (stats.processes, stats.starts, stats.before_gate) == (2, 2, 1)


def test_the_gate_is_held_from_stop_to_start_and_again_through_an_undo() -> None:
    failed_start = [
        runtime(1.0, "stop"),
        runtime(2.0, "start"),
        runtime(2.5, "health"),
        runtime(4.0, "undo start"),
        runtime(4.5, "undo apply-files"),
        runtime(5.0, "undo stop"),
    ]
    assert traffic.gate_held(failed_start) == [(T0 + 1.0, T0 + 2.0), (T0 + 4.0, T0 + 5.0)]
    still = traffic.gate_held([runtime(1.0, "stop"), runtime(1.5, "migrate")])
    assert still == [(T0 + 1.0, float("inf"))]
    # other lines that mention the steps are not the steps
    assert traffic.gate_held([runtime(1.0, "stop (0.1 s)"), entry(2.0, "-> start of something")]) == []


def test_an_operation_without_a_stop_has_no_outage() -> None:
    stats = traffic.analyze(op("fixup"), [req(0.5, 0.01)], 0, [runtime(0.6, "health")])
    assert stats.outage is None
    assert (stats.processes, stats.starts, stats.before_gate) == (0, 0, 0)


def test_journal_json_lines() -> None:
    lines = [
        {"__REALTIME_TIMESTAMP": "1800000001000000", "_PID": "1", "UNIT": UNIT, "MESSAGE": "Stopping x"},
        {
            "__REALTIME_TIMESTAMP": "1800000002000000",
            "_SOURCE_REALTIME_TIMESTAMP": "1800000001500000",
            "_PID": "7",
            "_SYSTEMD_UNIT": UNIT,
            "MESSAGE": "hello",
        },
        {"__REALTIME_TIMESTAMP": "1800000003000000", "_PID": "7", "MESSAGE": [104, 105]},  # binary
    ]
    text = "\n".join(json.dumps(x) for x in lines) + "\nnot json\n"
    assert server.journal_entries(text) == [
        server.Entry(T0 + 1.0, 1, UNIT, "Stopping x"),
        server.Entry(T0 + 1.5, 7, UNIT, "hello"),
    ]


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(i) for i in range(1, 101)]
    assert traffic.percentile(values, 50) == 50.0
    assert traffic.percentile(values, 99) == 99.0
    assert traffic.percentile([7.0], 99) == 7.0
    assert traffic.percentile([], 99) == 0.0


def _variant(socket: bool, failed_in_update: int = 0) -> traffic.VariantResult:
    ops = [op("restart", 0, 10), op("update", 10, 20), op("fixup", 20, 30)]
    reqs = [req(-1.0, 0.01)]  # before the first operation
    reqs += [req(t + 0.5, 0.01) for t in (0, 10, 20)]
    reqs += [req(11.0 + i / 10, 0.001, "refused") for i in range(failed_in_update)]
    entries = [*[entry(e.t - T0 + 10, e.message, pid=e.pid, unit=e.unit) for e in UPDATE]]
    reqs.append(req(12.5, 0.01))
    reqs.sort(key=lambda r: r.start)
    name = "socket unit" if socket else "no socket unit"
    return traffic.summarize(name, socket, ops, reqs, [T0 + 15.0], entries, 30.0)


def test_requests_count_in_the_operation_they_started_in() -> None:
    v = _variant(True, failed_in_update=3)
    assert [s.requests for s in v.ops] == [1, 5, 1]
    assert [s.idle_lost for s in v.ops] == [0, 1, 0]
    assert v.ops[1].failures == {"refused": 3}
    assert v.outside == {} and v.requests == 8 and v.failed == 3
    assert set(v.kinds) == {"restart", "update", "fixup"}
    assert v.kinds["update"].failed == 3


def test_goals_and_the_table_with_and_without_the_socket() -> None:
    result = traffic.RequestsResult("trixie", "3.13", 1, [_variant(True), _variant(False, 4)])
    goals = {g.name: g for g in traffic.goals(result)}
    zero = next(g for name, g in goals.items() if "no failed request" in name)
    assert zero.met, zero.detail
    assert "without it 4 of" in zero.detail
    one = next(g for name, g in goals.items() if "one new app process" in name)
    assert one.met, one.detail
    longest = next(g for name, g in goals.items() if "longest request" in name)
    assert longest.met, longest.detail
    text = traffic.markdown(result)
    update_rows = [line for line in text.splitlines() if line.startswith("| ") and "| socket unit |" in line]
    assert len(update_rows) == 3
    assert "| no socket unit | 1 | 2 | **4** |" in text
    assert "no socket unit, update 1.2.0 → 1.2.1 (a page, no migration): 4 refused" in text

    failing = traffic.RequestsResult("trixie", "3.13", 1, [_variant(True, 1)])
    zero = next(g for g in traffic.goals(failing) if "no failed request" in g.name)
    assert not zero.met
    assert "1 failed of" in zero.detail and traffic.KINDS["update"] in zero.detail


# -- the releases without the socket unit ---------------------------------------------------

CONFIG = """\
[app]
name = "shop"
service = "shop.service"
unit_file = "deploy/shop.service"
# why the socket:
# two lines of it
socket_file = "deploy/shop.socket"

[health]
url = "http://127.0.0.1:5000/health"
"""

SERVICE = """\
[Unit]
Description=Shop
After=network.target
# the socket, explained
Requires=shop.socket
After=shop.socket
Wants=shop.socket other.target

[Service]
ExecStart=/usr/bin/shop
"""


def test_the_settings_and_the_unit_lose_the_socket_and_nothing_else() -> None:
    config = socketless.config_without_socket(CONFIG)
    assert config == CONFIG.replace(
        '# why the socket:\n# two lines of it\nsocket_file = "deploy/shop.socket"\n', ""
    )
    unit = socketless.unit_without_socket(SERVICE, "shop.socket")
    assert unit == (
        "[Unit]\nDescription=Shop\nAfter=network.target\nWants=other.target\n\n"
        "[Service]\nExecStart=/usr/bin/shop\n"
    )


def _git(repo: Path, *args: str) -> str:
    return store._git(repo, *args).decode().strip()


def _commit(repo: Path, files: dict[str, str | None], tag: str | None = None) -> None:
    for name, text in files.items():
        path = repo / name
        if text is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    _git(repo, "add", "--all")
    _git(repo, "commit", "-q", "-m", tag or "change")
    if tag:
        _git(repo, "tag", "-a", tag, "-m", tag)


def test_a_copy_of_the_history_without_the_socket(tmp_path: Path) -> None:
    repo = tmp_path / "origin" / "shop"
    repo.mkdir(parents=True)
    _git(repo, "init", "-q", "-b", "main")
    _commit(
        repo,
        {
            "app.py": "v0\n",
            "nesop-deb.toml": CONFIG.replace(SOCKET_LINES, ""),
            "deploy/shop.service": "[Service]\nExecStart=/usr/bin/shop\n",
        },
        "v1.0.0",
    )
    _commit(
        repo,
        {
            "app.py": "v1\n",
            "nesop-deb.toml": CONFIG,
            "deploy/shop.service": SERVICE,
            "deploy/shop.socket": "[Socket]\nListenStream=5000\n",
        },
        "v1.1.0",
    )
    _commit(repo, {"app.py": "v2\n", "migrations/0002.sql": "select 1;\n"}, "v1.1.1")
    _git(repo, "checkout", "-q", "-b", "broken/x", "v1.1.1")
    _commit(repo, {"app.py": "broken\n", "migrations/0002.sql": None})
    _git(repo, "checkout", "-q", "main")
    refs = (("v1.1.0", None), ("v1.1.1", "v1.1.0"), ("broken/x", "v1.1.1"))

    plain = socketless.copy(store.ExampleRepo(repo, tmp_path / "unused"), tmp_path / "plain", refs)

    assert plain.out.is_dir()
    for ref, base in refs:
        files = set(_git(plain.path, "ls-tree", "-r", "--name-only", ref).split())
        original = set(_git(repo, "ls-tree", "-r", "--name-only", ref).split())
        assert files == original - {"deploy/shop.socket"}
        assert "socket" not in _git(plain.path, "show", f"{ref}:nesop-deb.toml")
        assert "shop.socket" not in _git(plain.path, "show", f"{ref}:deploy/shop.service")
        assert _git(plain.path, "show", f"{ref}:app.py") == _git(repo, "show", f"{ref}:app.py")
        if base is not None:
            # each commit follows its base's, so a build's range holds just that release's change
            assert _git(plain.path, "rev-parse", f"{ref}^") == _git(
                plain.path, "rev-parse", f"{base}^{{commit}}"
            )
            changed = _git(plain.path, "diff", "--name-only", base, ref).split()
            assert changed == _git(repo, "diff", "--name-only", base, ref).split()
    assert _git(plain.path, "cat-file", "-t", "v1.1.0") == "tag"
    assert _git(plain.path, "rev-parse", "v1.1.0^") == _git(repo, "rev-parse", "v1.0.0^{commit}")
    # the original is untouched
    assert "socket_file" in _git(repo, "show", "v1.1.1:nesop-deb.toml")


SOCKET_LINES = '# why the socket:\n# two lines of it\nsocket_file = "deploy/shop.socket"\n'


def test_the_example_stores_socket_releases_without_the_socket(tmp_path: Path) -> None:
    subprocess.run(
        [str(store.EXAMPLE / "make-release-repo"), str(tmp_path / "nesop-store")],
        check=True,
        capture_output=True,
    )
    repo = store.ExampleRepo(tmp_path / "nesop-store", tmp_path / "debs")
    plain = socketless.copy(repo, tmp_path / "plain", traffic.REFS)
    for ref, _ in traffic.REFS:
        config = load_config(_git(plain.path, "show", f"{ref}:nesop-deb.toml"))
        assert config.app.unit_file == "deploy/nesop-store.service"
        assert "socket_file" not in _git(plain.path, "show", f"{ref}:nesop-deb.toml")
        unit = _git(plain.path, "show", f"{ref}:deploy/nesop-store.service")
        assert "nesop-store.socket" not in "\n".join(
            line for line in unit.splitlines() if not line.startswith("#")
        )
        assert "deploy/nesop-store.socket" not in _git(plain.path, "ls-tree", "-r", "--name-only", ref)
        assert "socket_file" in _git(repo.path, "show", f"{ref}:nesop-deb.toml")
