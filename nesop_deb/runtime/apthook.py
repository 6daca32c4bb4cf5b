"""The APT ``DPkg::Pre-Install-Pkgs`` hook (installed by the nesop-deb package).

apt writes the path of every .deb it is about to hand to dpkg on our stdin, ``apt install
./file.deb`` included. For each nesop-deb update package this hook verifies every payload file
against the manifest, refusing a tampered package before dpkg touches anything (a non-zero exit
stops apt), and stages it for the app's local repository, where postinst publishes it once its
version is applied, so it can be reinstalled later.
Plain ``dpkg -i`` bypasses apt hooks; postinst verifies the payload again.
"""

from __future__ import annotations

import sys
from pathlib import Path

from nesop_deb import debfile, proc, signing
from nesop_deb.errors import NesopError
from nesop_deb.runtime import apply, repo
from nesop_deb.runtime import log as runlog


def _is_update(deb: Path) -> bool:
    result = proc.run(["dpkg-deb", "-f", deb, "Pre-Depends"], check=False)
    return result.returncode == 0 and "nesop-deb" in result.out


def handle(deb: Path) -> None:
    if deb.suffix != ".deb" or not deb.is_file() or not _is_update(deb):
        return
    signed_by = signing.verify(deb)
    update = debfile.open_update(deb)
    problems = debfile.verify_payload(update)
    if problems:
        raise NesopError(
            f"{deb.name}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
            hint="the package was altered or damaged; nothing was installed",
        )
    ctx = apply.context_for(update.manifest)
    repo.stage_incoming(ctx, deb, update.manifest.version, signed_by is not None)


def main() -> int:
    runlog.setup(None)
    failed = False
    for line in sys.stdin.read().splitlines():
        path = line.strip()
        if not path or path.startswith("**"):
            continue
        try:
            handle(Path(path))
        except NesopError as exc:
            sys.stderr.write(f"nesop-deb: refusing {path}: {exc}\n")
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
