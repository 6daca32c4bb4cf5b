"""``nesop-deb``: build, inspect and verify update packages; set an app repository up."""

from __future__ import annotations

import os
from pathlib import Path

import click

from nesop_deb import debfile, publish, signing
from nesop_deb.builder import scaffold
from nesop_deb.builder.git import GitRepo
from nesop_deb.builder.package import build_deb, manifest_bytes
from nesop_deb.builder.plan import BuildOptions, describe, find_app_dir, make_plan, target_text
from nesop_deb.cli.common import group, guarded, show
from nesop_deb.config import ARCHITECTURES, CONFIG_NAME
from nesop_deb.errors import NesopError, UsageError

cli = group("nesop-deb", "Turn an app's changes into versioned update packages (.deb).")


@cli.command()
@click.option("-C", "directory", type=click.Path(path_type=Path), default=".", help="The app repository.")
@click.option(
    "--version",
    "version",
    help="Package version (default: the vX.Y.Z tag on HEAD; another needs that tag on HEAD, or --since).",
)
@click.option("--since", help="Compare with this ref (default: the highest release tag below the version).")
@click.option(
    "--files",
    "files",
    multiple=True,
    help="Ship only these paths (repeatable); a named file that did not change ships as HEAD has it.",
)
@click.option(
    "--no-migrations",
    is_flag=True,
    help="Ship no migrations: the range's migration files are neither shipped nor run.",
)
@click.option(
    "--allow-partial",
    is_flag=True,
    help="Build although --files or --no-migrations leaves out changes of the range (listed, and recorded).",
)
@click.option("--full", is_flag=True, help="Ship every included file: a first install.")
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Where the .deb goes (default: dist/ in the app directory); --full packages go into its full/.",
)
@click.option("--allow-dirty", is_flag=True, help="Build HEAD even with uncommitted changes.")
@click.option(
    "--python",
    "python",
    metavar="X.Y",
    help="Fetch the wheels of [dependencies] for this python3 (default: its `python`).",
)
@click.option(
    "--arch",
    metavar="|".join(ARCHITECTURES),
    help="Fetch the wheels of [dependencies] for this architecture (default: its `architecture`).",
)
@click.option(
    "--all-wheels",
    is_flag=True,
    help="Ship every wheel of [dependencies], not only those the base did not pin (a server whose"
    " virtualenv was made by hand has none of them).",
)
@click.option("--dry-run", is_flag=True, help="Print the plan; write nothing.")
@click.option(
    "--sign",
    "sign_key",
    metavar="KEYID",
    help="Sign the manifest (carried in the package) and write FILE.deb.asc, with this gpg key.",
)
@click.argument("extra_files", nargs=-1)
@click.pass_obj
def build(
    debug: bool,
    directory: Path,
    version: str | None,
    since: str | None,
    files: tuple[str, ...],
    no_migrations: bool,
    full: bool,
    output: Path | None,
    allow_partial: bool,
    allow_dirty: bool,
    python: str | None,
    arch: str | None,
    all_wheels: bool,
    dry_run: bool,
    sign_key: str | None,
    extra_files: tuple[str, ...],
) -> None:
    """Build the update package of the app in DIR; print its path last.

    `--files a b c` takes several paths, as the original tool did."""

    def run() -> None:
        if extra_files and not files:
            raise UsageError(
                f"unexpected argument {extra_files[0]!r}",
                hint=(
                    f"to build the app in that directory pass -C {extra_files[0]}"
                    if Path(extra_files[0]).is_dir()
                    else "name the files to ship with --files"
                )
                + "; nesop-deb build takes no positional arguments without --files",
            )
        if sign_key is not None and not dry_run:
            signing.check_key(sign_key)
        named = files + extra_files
        app_dir = find_app_dir(directory)
        if app_dir != directory.resolve():
            show(f"note: building the app in {app_dir} (its {CONFIG_NAME})", err=True)
            # like git's paths: relative to where the command runs (-C DIR), not to the app
            named = tuple(f if Path(f).is_absolute() else str(directory.resolve() / f) for f in named)
        options = BuildOptions(
            version, since, named, no_migrations, full, allow_dirty, allow_partial, python, arch, all_wheels
        )
        plan = make_plan(app_dir, options)
        for note in plan.notes:
            show(f"note: {note}", err=True)
        for warning in plan.warnings:
            show(f"warning: {warning}", err=True)
        left = plan.manifest.left_behind
        if left:
            names = ", ".join(lb.path for lb in left)
            show(
                f"warning: partial update: {len(left)} changed file(s) left out ({names}); the server"
                " keeps them as they were until an update writes them",
                err=True,
            )
        for line in describe(plan.manifest):
            show(line, err=True)
        if dry_run:
            click.echo(plan.manifest.to_json(), nl=False)
            return
        out = app_dir / "dist" if output is None else output if output.is_absolute() else Path.cwd() / output
        if plan.manifest.full:  # never in place of the update package of the same version
            out = out / "full"
        # the manifest is signed before the package exists: preinst carries the signature
        manifest_sig = None if sign_key is None else signing.sign_bytes(manifest_bytes(plan), sign_key)
        deb = build_deb(plan, out, manifest_sig)
        if sign_key is not None:
            try:
                click.echo(f"signed: {signing.sign(deb, sign_key)}", err=True)
            except NesopError:
                deb.unlink()
                raise
        click.echo(str(deb))

    guarded("nesop-deb", debug, run)


@cli.command()
@click.argument("deb", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.pass_obj
def inspect(debug: bool, deb: Path, as_json: bool) -> None:
    """Show what an update package will do: version, base, files, migrations, scripts."""

    def run() -> None:
        update = debfile.open_update(deb)
        m = update.manifest
        if as_json:
            click.echo(m.to_json(), nl=False)
            return
        show(f"package:    {m.package} {m.version}")
        show(f"applies to: {', '.join(m.bases) if m.bases else 'any (full install)'}")
        app = m.config["app"]
        show(f"app:        {app['name']} at {app['root']} ({app['service']})")
        show(f"source:     {m.source_commit}" + (f" since {m.since_ref}" if m.since_ref else ""))
        needs = [update.control.get(f, "") for f in ("Pre-Depends", "Depends")]
        show(f"requires:   {', '.join(n for n in needs if n)}")
        click.echo("files:")
        for f in m.files:
            size = "" if f.sha256 is None else f" {f.size} B, mode {f.mode:o}" if f.mode is not None else ""
            extra = f" (from {f.renamed_from})" if f.renamed_from else ""
            show(f"  {f.action.value:<7} {f.path}{extra}{size}")
        if not m.files:
            click.echo("  (none)")
        click.echo("migrations:")
        for mig in m.migrations:
            undo = "reversible" if mig.reversible else "NOT reversible (undo restores the snapshot)"
            show(f"  {mig.id}  {undo}")
        if not m.migrations:
            click.echo("  (none)")
        if m.config_files:
            show(f"config files (local edits kept): {', '.join(m.config_files)}")
        if m.left_behind:
            show(f"left out (partial; kept as they were): {', '.join(lb.path for lb in m.left_behind)}")
        deps = m.dependencies
        if deps is not None:
            show(f"virtualenv: new, from {deps.requirements_file} for {target_text(deps)}")
            click.echo(f"wheels:     {len(deps.wheels)} shipped")
            for w in deps.wheels:
                show(f"  {w.file} {w.size} B")
        elif "dependencies" in m.config:
            click.echo("virtualenv: unchanged")
        show(f"scripts:    {', '.join(sorted(update.scripts))}")

    guarded("nesop-deb", debug, run)


@cli.command()
@click.argument("deb", type=click.Path(path_type=Path))
@click.pass_obj
def verify(debug: bool, deb: Path) -> None:
    """Check every payload file and migration of DEB against its manifest's sha256."""

    def run() -> None:
        update = debfile.open_update(deb)
        problems = debfile.verify_payload(update)
        if problems:
            for p in problems:
                show(f"{deb}: {p}", err=True)
            raise NesopError(f"{deb}: {len(problems)} problem(s) found; do not install this package")
        n = sum(1 for f in update.manifest.files if f.ships_payload)
        deps = update.manifest.dependencies
        wheels = f", {len(deps.wheels)} wheels" if deps is not None else ""
        show(
            f"{deb}: ok ({n} payload files, {len(update.manifest.migrations)} migrations{wheels} match the"
            " manifest)"
        )

    guarded("nesop-deb", debug, run)


@cli.command("publish")
@click.option(
    "--repo",
    "repo",
    type=click.Path(path_type=Path),
    required=True,
    help="The apt repository's directory (new, or one this command wrote); serve it as it is.",
)
@click.option(
    "--sign",
    "sign_key",
    metavar="KEYID",
    help="Sign it with this gpg key (the first time; later runs use the key recorded in DIR).",
)
@click.option(
    "--suite",
    "suites",
    multiple=True,
    metavar="SUITE",
    help="Debian release(s) to publish to (repeatable; default: every one DIR has, else this machine's;"
    " a package for one architecture: the release its version names).",
)
@click.option(
    "--url", help="The address servers fetch DIR from, for the printed deb lines (default: file://DIR/)."
)
@click.argument("debs", metavar="FILE.deb...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.pass_obj
def publish_command(
    debug: bool,
    repo: Path,
    sign_key: str | None,
    suites: tuple[str, ...],
    url: str | None,
    debs: tuple[Path, ...],
) -> None:
    """Add packages to the signed apt repository in DIR (aptly keeps every version) and publish it;
    print the apt source lines, the last one a `deb` line."""

    def run() -> None:
        outcome = publish.publish(repo, debs, sign=sign_key, suites=suites, url=url)
        for line in outcome.lines():
            show(line)

    guarded("nesop-deb", debug, run)


@cli.command()
@click.option("-C", "directory", type=click.Path(path_type=Path), default=".", help="The app repository.")
@click.option("--name", help="App name (default: the directory's name).")
@click.option("--root", help="App root on the server (default: /opt/NAME).")
@click.option(
    "--user",
    default=None,
    help="The account owning the app's data (default: NAME, a system account the first install creates).",
)
@click.option("--maintainer", default=None, help="'Name <email>' (default: from git config).")
@click.option("--force", is_flag=True, help="Overwrite an existing nesop-deb.toml.")
@click.pass_obj
def init(
    debug: bool,
    directory: Path,
    name: str | None,
    root: str | None,
    user: str | None,
    maintainer: str | None,
    force: bool,
) -> None:
    """Set the app repository in DIR up for `make deb`: write a nesop-deb.toml filled in from what
    the repository holds (its unit file, migrations, git identity), a Makefile snippet, and
    /dist/ in .gitignore; then print what is left to check."""

    def run() -> None:
        repo = scaffold.open_repo(directory)
        target = directory / CONFIG_NAME
        if target.exists() and not force:
            raise UsageError(f"{target} already exists", hint="edit it, or pass --force to overwrite it")
        above = find_app_dir(directory)
        if above != repo.dir and not force:
            raise UsageError(
                f"{directory} is inside the app in {above} (its {CONFIG_NAME})",
                hint=f"run nesop-deb init there, or pass --force to set a second app up in {directory}",
            )
        setup = scaffold.settings(
            repo,
            scaffold.survey(repo),
            name=name,
            root=root,
            user=user,
            maintainer=_git_maintainer(repo, maintainer),
        )
        written = scaffold.write(directory, setup)
        for line in scaffold.report(directory, setup, written, here=Path.cwd()):
            show(line)

    guarded("nesop-deb", debug, run)


def _git_maintainer(repo: GitRepo, given: str | None) -> tuple[str, str]:
    """``(maintainer, where it came from)``: --maintainer, else the app repository's git identity,
    else DEBFULLNAME / DEBEMAIL from the environment."""
    return scaffold.maintainer_of(given, scaffold.git_identity(repo), os.environ)


def main() -> None:
    cli(prog_name="nesop-deb")


if __name__ == "__main__":
    main()
