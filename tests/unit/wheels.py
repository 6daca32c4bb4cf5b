"""Small real wheels for the runtime's tests: pip installs them like any other (no network)."""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Wheel:
    path: Path
    name: str
    version: str
    sha256: str

    @property
    def file(self) -> str:
        return self.path.name

    @property
    def pin(self) -> str:
        return f"{self.name}=={self.version} --hash=sha256:{self.sha256}\n"


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel(dest: Path, name: str, version: str, modules: dict[str, str] | None = None) -> Wheel:
    """A pure-Python wheel ``name-version-py3-none-any.whl`` in ``dest`` with ``modules``
    (module file name -> source; by default one package named after the distribution)."""
    dist = name.replace("-", "_")
    modules = modules if modules is not None else {f"{dist}/__init__.py": f"VERSION = {version!r}\n"}
    info = f"{dist}-{version}.dist-info"
    files = {
        **{path: src.encode() for path, src in modules.items()},
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{p},{_record_hash(d)},{len(d)}\n" for p, d in files.items()) + f"{info}/RECORD,,\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for member, data in [*files.items(), (f"{info}/RECORD", record.encode())]:
            zf.writestr(zipfile.ZipInfo(member, date_time=(2025, 1, 1, 0, 0, 0)), data)
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{dist}-{version}-py3-none-any.whl"
    path.write_bytes(buf.getvalue())
    return Wheel(path, name, version, hashlib.sha256(buf.getvalue()).hexdigest())
