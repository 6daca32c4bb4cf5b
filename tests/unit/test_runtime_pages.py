"""``[health] pages``: the pages answer, and so does every asset they load from the app."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nesop_deb.runtime import failures, operations, pages, transaction
from tests.unit.runtime_fixtures import PACKAGE, Server, fake_server, install_base, release_101, tree

INDEX = b"""<!doctype html><html><head>
<link rel="stylesheet" href="/styles/main.css"><link rel="icon" href="favicon.ico">
<link rel="canonical" href="/"><script src="scripts/products.js?v=2#x"></script>
<script src="https://cdn.example.org/lib.js"></script><script>var inline = 1;</script>
</head><body><a href="/admin">admin</a><img src="/img/logo.png" alt="">
<img src="data:image/png;base64,AAAA"><form action="/cart"></form></body></html>"""


@pytest.fixture
def site() -> Iterator[dict[str, tuple[int, bytes]]]:
    """A real HTTP server on 127.0.0.1 answering from a dict: path -> (status, body)."""
    routes: dict[str, tuple[int, bytes]] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = routes.get(self.path, (404, b"not found"))
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    routes["__base__"] = (0, f"http://127.0.0.1:{httpd.server_address[1]}".encode())
    yield routes
    httpd.shutdown()
    httpd.server_close()


def base(site: dict[str, tuple[int, bytes]]) -> str:
    return site["__base__"][1].decode()


def test_references_are_what_the_page_loads_from_the_app() -> None:
    url = "http://127.0.0.1:5000/shop/"
    assert pages.references(url, INDEX.decode()) == [
        "http://127.0.0.1:5000/styles/main.css",
        "http://127.0.0.1:5000/shop/favicon.ico",
        "http://127.0.0.1:5000/shop/scripts/products.js?v=2",
        "http://127.0.0.1:5000/img/logo.png",
    ]  # not the canonical link, the other site, inline data, links or forms


def test_a_page_whose_script_is_missing_fails(site: dict[str, tuple[int, bytes]]) -> None:
    site["/"] = (200, INDEX)
    site["/admin"] = (
        200,
        b'<script src="/scripts/admin.js"></script><link rel=stylesheet href=/styles/main.css>',
    )
    for path in ("/styles/main.css", "/favicon.ico", "/img/logo.png", "/scripts/admin.js"):
        site[path] = (200, b"x")

    report = pages.check(f"{base(site)}/health", ("/", "/admin"))

    assert report.problems == [f"{base(site)}/ loads {base(site)}/scripts/products.js?v=2: HTTP 404"]
    assert (report.pages, report.assets) == (2, 5)  # main.css is fetched once

    site["/scripts/products.js?v=2"] = (200, b"x")
    assert pages.check(f"{base(site)}/health", ("/", "/admin")).ok


def test_a_page_that_fails_is_named_and_its_assets_not_fetched(site: dict[str, tuple[int, bytes]]) -> None:
    site["/"] = (500, INDEX)
    report = pages.check(f"{base(site)}/health", ("/", "http://127.0.0.1:1/elsewhere"))
    assert report.problems[0] == f"{base(site)}/: HTTP 500"
    assert report.problems[1].startswith("http://127.0.0.1:1/elsewhere: no answer")
    assert report.assets == 0


def test_a_page_html_parser_cannot_read_is_not_an_error() -> None:
    """What is read before the page stops making sense is checked; the rest is not an error."""
    assert pages.references("http://h/", "<script src='/a.js'><![ broken <<<>>> <img src=/b.png") == [
        "http://h/a.js"
    ]


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    yield from fake_server(tmp_path, monkeypatch)


def test_the_health_gate_fails_an_update_whose_page_loads_a_missing_asset(
    site: dict[str, tuple[int, bytes]], server: Server
) -> None:
    """The v1.0.2 case: a page shipped without the script it loads; the update is undone."""
    site["/health"] = (200, b"ok")
    site["/"] = (200, b'<script src="/scripts/products.js"></script>')
    install_base(server)
    before = tree(server.app_root)
    server.configure(url=f"{base(site)}/health", pages=["/"])
    release_101(server)

    with pytest.raises(transaction.TransactionFailed) as failed:
        operations.configure(PACKAGE, "1.0.1")

    assert failed.value.step == "health"
    assert "loads" in str(failed.value.cause) and "products.js: HTTP 404" in str(failed.value.cause)
    assert tree(server.app_root) == before

    site["/scripts/products.js"] = (200, b"x")
    failures.clear(server.ctx)
    operations.configure(PACKAGE, "1.0.1")
    assert server.applied()[-1] == "1.0.1"


def test_a_reference_that_is_not_a_url_is_skipped() -> None:
    assert pages.references("http://h/", '<img src="//[::1"><script src="/a.js"></script>') == [
        "http://h/a.js"
    ]


def test_the_pages_have_one_budget_whatever_each_answer_takes(site: dict[str, tuple[int, bytes]]) -> None:
    site["/"] = (200, b'<script src="/a.js"></script>')
    site["/a.js"] = (200, b"x")
    report = pages.check(f"{base(site)}/health", ("/",), budget=0)
    assert report.problems == [f"{base(site)}/: not checked: the pages took more than 0 s"]
