"""The maintainer scripts of an update package: thin shims rendered from ``templates/``.

The builder writes them (:mod:`nesop_deb.builder.package`); preinst finds its embedded manifest
here; the APT hook renders them again to recognise a package whose scripts are exactly the ones
nesop-deb writes for its signed manifest.
"""

from __future__ import annotations

import base64
import re
import zlib

MAINTAINER_SCRIPTS = ("preinst", "postinst", "prerm", "postrm")
_MANIFEST = re.compile(r'^MANIFEST = "([A-Za-z0-9+/=]*)"$', re.MULTILINE)
_MANIFEST_SIG = re.compile(r'^MANIFEST_SIG = "([A-Za-z0-9+/=]*)"$', re.MULTILINE)


def embedded(preinst: str) -> tuple[str, str] | None:
    """The base64 ``MANIFEST`` and ``MANIFEST_SIG`` ("" when unsigned) a preinst carries."""
    manifest = _MANIFEST.search(preinst)
    if manifest is None:
        return None
    sig = _MANIFEST_SIG.search(preinst)
    return manifest.group(1), sig.group(1) if sig is not None else ""


def encode(raw: bytes, signature: str | None = None) -> tuple[str, str]:
    """The ``MANIFEST`` (zlib, base64) and ``MANIFEST_SIG`` (armoured, base64; "" unsigned) lines."""
    sig = base64.b64encode(signature.encode("ascii")).decode() if signature else ""
    return base64.b64encode(zlib.compress(raw, 9)).decode(), sig


def decode(fields: tuple[str, str]) -> tuple[bytes, str | None] | None:
    """The manifest bytes and armoured signature (None: unsigned) of :func:`embedded`'s fields;
    None when they are not what the builder writes."""
    try:
        raw = zlib.decompress(base64.b64decode(fields[0]))
        signature = base64.b64decode(fields[1]).decode("ascii") if fields[1] else None
    except (ValueError, zlib.error):
        return None
    return raw, signature


def render_script(
    script: str,
    *,
    builder_version: str,
    package: str,
    version: str,
    manifest: str = "",
    manifest_sig: str = "",
) -> str:
    """The text of ``script``; ``manifest`` and ``manifest_sig`` (base64) go into preinst only."""
    # imported here: preinst reads its manifest through this module and needs no jinja2
    from nesop_deb.render import render

    preinst = script == "preinst"
    return render(
        "postrm.sh.j2" if script == "postrm" else "maintscript.py.j2",
        builder_version=builder_version,
        script=script,
        package=package,
        version=version,
        manifest=manifest if preinst else "",
        manifest_sig=manifest_sig if preinst else "",
    )
