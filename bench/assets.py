"""Deterministic, realistic web-store assets: product photos and vendor scripts.

Photos are JPEG and PNG files whose image data is seeded random bytes: compressed image data is
incompressible, so xz gains nothing on them, as with real photos. Scripts and style sheets are
generated code text, which compresses several times, as real bundles do. The same seed always
writes the same bytes, so packages built from them are reproducible.
"""

from __future__ import annotations

import random
import shutil
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024
IMAGE_SHARE = 0.8  # of the bytes; the rest is JS and CSS text

_WORD_LIST = (
    "cart item price total product stock order customer image gallery zoom thumb carousel slide "
    "filter sort category badge modal toast render update fetch cache state store view panel list "
    "grid card button input form submit query result page layout theme color font spacing border"
)
_WORDS = tuple(_WORD_LIST.split())


@dataclass(frozen=True)
class AssetSet:
    files: int
    image_bytes: int
    text_bytes: int

    @property
    def total(self) -> int:
        return self.image_bytes + self.text_bytes


def _jpeg(rng: random.Random, size: int) -> bytes:
    app0 = b"JFIF\x00\x01\x01\x01\x00H\x00H\x00\x00"
    header = b"\xff\xd8" + b"\xff\xe0" + struct.pack(">H", len(app0) + 2) + app0
    width, height = rng.choice(((1600, 1200), (1200, 1200), (800, 600), (2048, 1536)))
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    header += b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof
    body = rng.randbytes(max(0, size - len(header) - 4)).replace(b"\xff", b"\xfe")
    return header + b"\xff\xda" + body + b"\xff\xd9"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(rng: random.Random, size: int) -> bytes:
    width, height = rng.choice(((512, 512), (1024, 768), (256, 256)))
    out = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))
    left = max(0, size - len(out) - 12 - 12)
    while left > 0:
        n = min(left, 65536)
        out += _png_chunk(b"IDAT", rng.randbytes(n))
        left -= n + 12
    return out + _png_chunk(b"IEND", b"")


def _name(rng: random.Random) -> str:
    first, second = rng.choice(_WORDS), rng.choice(_WORDS)
    return first + second.capitalize() + str(rng.randrange(100))


def _js(rng: random.Random, size: int, title: str) -> bytes:
    parts = [f"/*! {title} v{rng.randrange(1, 9)}.{rng.randrange(20)}.{rng.randrange(20)} | MIT */\n"]
    length = len(parts[0])
    while length < size:
        fn, a, b = _name(rng), rng.choice(_WORDS), rng.choice(_WORDS)
        body = (
            f"export function {fn}({a}, {b}Options = {{}}) {{\n"
            f"  const {b}s = {a}.filter((x) => x.{rng.choice(_WORDS)} > {rng.randrange(1000)});\n"
            f'  if (!{b}s.length) return "{rng.choice(_WORDS)}-{rng.randrange(10**6)}";\n'
            f"  return {b}s.map((x) => ({{ ...x, {rng.choice(_WORDS)}: x.{b} * {rng.randrange(2, 99)} }}));\n"
            "}\n\n"
        )
        parts.append(body)
        length += len(body)
    return "".join(parts).encode()[:size]


def _css(rng: random.Random, size: int, title: str) -> bytes:
    parts = [f"/* {title} */\n"]
    length = len(parts[0])
    while length < size:
        rule = (
            f".{rng.choice(_WORDS)}-{rng.choice(_WORDS)}-{rng.randrange(500)} {{\n"
            f"  margin: {rng.randrange(40)}px {rng.randrange(40)}px;\n"
            f"  color: #{rng.randrange(16**6):06x};\n"
            f"  border-radius: {rng.randrange(12)}px;\n"
            "}\n"
        )
        parts.append(rule)
        length += len(rule)
    return "".join(parts).encode()[:size]


def _sizes(rng: random.Random, total: int, low: int, high: int) -> Iterator[int]:
    """File sizes spread log-uniformly between low and high, adding up to ``total``."""
    left = total
    while left > 0:
        size = min(left, int(low * (high / low) ** rng.random()))
        left -= size
        yield size


def generate(dest: Path, total_bytes: int, seed: int = 2026) -> AssetSet:
    """Write about ``total_bytes`` of assets under ``dest`` (an app tree); same seed, same bytes."""
    rng = random.Random(seed)
    files = images = text = 0
    for i, size in enumerate(_sizes(rng, int(total_bytes * IMAGE_SHARE), 40_000, 1_500_000)):
        if i % 3 == 2:
            path, data = dest / f"assets/gallery/banner-{i:04d}.png", _png(rng, size)
        else:
            path, data = dest / f"assets/products/photo-{i:04d}.jpg", _jpeg(rng, size)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files, images = files + 1, images + len(data)
    for i, size in enumerate(_sizes(rng, total_bytes - images, 20_000, 600_000)):
        if i % 4 == 3:
            path, data = dest / f"styles/vendor/theme-{i:03d}.css", _css(rng, size, f"theme {i}")
        else:
            path, data = dest / f"scripts/vendor/bundle-{i:03d}.js", _js(rng, size, f"bundle {i}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files, text = files + 1, text + len(data)
    return AssetSet(files, images, text)


def fill(dest: Path, source: Path, total_bytes: int) -> int:
    """Copy the files of ``source`` into ``dest`` round after round until ``total_bytes`` are there.

    For the large app sizes: copying a generated set is much faster than generating more, and
    every copy is a real file with real bytes on disk. Returns the number of files written.
    """
    originals = sorted(p for p in source.rglob("*") if p.is_file())
    if not originals:
        raise ValueError(f"{source} holds no files to copy")
    written = files = 0
    round_ = 0
    while written < total_bytes:
        for path in originals:
            if written >= total_bytes:
                break
            target = dest / f"copy-{round_:03d}" / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            written += path.stat().st_size
            files += 1
        round_ += 1
    return files
