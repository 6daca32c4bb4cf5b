"""``[health] pages``: each page answers 2xx, and so does every asset it loads from the app.

An update that ships a page but not the script it loads passes a health URL; a user sees the
broken page. So the health gate (before the commit) and ``validate --check web`` fetch each
configured page and then the scripts, style sheets, images and other resources it references
on the same origin (links to other pages and to other sites are not followed). Each GET is
bounded by :mod:`httpget` (the app may be hostile); the first :data:`httpget.BODY_CAP` bytes of a
page are read for references, at most :data:`MAX_ASSETS` per page.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urldefrag, urljoin, urlsplit

from nesop_deb.runtime import httpget

MAX_ASSETS = 100
TIMEOUT = 5.0  # seconds per GET
BUDGET = 60.0  # seconds for every page and asset together

# element → the attributes that load a resource with the page (not navigation: <a href>, forms)
_LOADS = {
    "script": ("src",),
    "img": ("src",),
    "source": ("src",),
    "audio": ("src",),
    "video": ("src", "poster"),
    "track": ("src",),
    "iframe": ("src",),
    "embed": ("src",),
    "input": ("src",),  # <input type=image>
}
_LINK_RELS = {"stylesheet", "icon", "shortcut", "preload", "modulepreload", "manifest", "apple-touch-icon"}


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v for k, v in attrs if v}
        if tag == "link":
            rels = set((values.get("rel") or "").lower().split())
            if rels & _LINK_RELS and values.get("href"):
                self.found.append(values["href"])
            return
        for attr in _LOADS.get(tag, ()):
            if values.get(attr):
                self.found.append(values[attr])


def page_url(health_url: str, page: str) -> str:
    """A configured page (``/admin`` or a whole URL) on the health URL's origin."""
    return urljoin(health_url, page)


def references(url: str, html: str) -> list[str]:
    """The same-origin resources ``html`` (served at ``url``) loads, in order, each once."""
    parser = _References()
    try:
        parser.feed(html)
        parser.close()
    except (AssertionError, ValueError):  # html.parser on a page it cannot make sense of
        pass
    origin = urlsplit(url)[:2]
    seen: dict[str, None] = {}
    for ref in parser.found:
        if ref.startswith(("data:", "blob:", "javascript:")):
            continue
        try:
            absolute = urldefrag(urljoin(url, ref.strip()))[0]
            same = urlsplit(absolute)[:2] == origin
        except ValueError:  # not a URL (`//[::1`): a browser loads nothing either
            continue
        if same and absolute != url:
            seen.setdefault(absolute, None)
    return list(seen)[:MAX_ASSETS]


@dataclass
class PagesReport:
    pages: int = 0
    assets: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _fetch(url: str, timeout: float) -> tuple[httpget.Answer | None, str | None]:
    """The answer if it is 2xx, else what went wrong."""
    try:
        answer = httpget.get(url, timeout)
    except httpget.NoAnswer as exc:
        return None, exc.message
    if not 200 <= answer.status < 300:
        return None, f"HTTP {answer.status}"
    return answer, None


def check(
    health_url: str, pages: tuple[str, ...], timeout: float = TIMEOUT, budget: float = BUDGET
) -> PagesReport:
    """GET each page and every asset it loads; a non-2xx answer or none at all is a problem. All of
    it within ``budget`` seconds (an app answering each GET slowly cannot hold root longer)."""
    report = PagesReport()
    checked: set[str] = set()  # an asset several pages load is fetched once
    deadline = time.monotonic() + budget

    def fetch(url: str) -> tuple[httpget.Answer | None, str | None]:
        left = deadline - time.monotonic()
        if left <= 0:
            return None, f"not checked: the pages took more than {budget:g} s"
        return _fetch(url, min(timeout, left))

    for page in pages:
        try:
            url = page_url(health_url, page)
        except ValueError:
            report.problems.append(f"{page}: not a URL")
            continue
        report.pages += 1
        answer, problem = fetch(url)
        if answer is None:
            report.problems.append(f"{url}: {problem}")
            continue
        for asset in references(url, answer.body):
            if asset in checked:
                continue
            checked.add(asset)
            report.assets += 1
            _, problem = fetch(asset)
            if problem is not None:
                report.problems.append(f"{url} loads {asset}: {problem}")
    return report
