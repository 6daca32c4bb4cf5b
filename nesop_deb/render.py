"""Render the jinja2 templates shipped in ``nesop_deb.templates`` (the repository's templates/)."""

from __future__ import annotations

from typing import Any

import jinja2

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("nesop_deb.templates", ""),
    autoescape=False,  # noqa: S701 - renders scripts and Debian metadata, never HTML
    keep_trailing_newline=True,
    undefined=jinja2.StrictUndefined,
)


def render(name: str, /, **values: Any) -> str:
    return _env.get_template(name).render(**values)
