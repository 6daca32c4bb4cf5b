"""Which version a build is, which release it updates, and the orderings the builder refuses.

A version names HEAD's content, so its tag may not be elsewhere; it must be above every release
HEAD already contains; and the release it updates must be in HEAD's history, or the update would
silently revert what that release shipped (a hotfix tagged on a branch that was never merged).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from debian.debian_support import Version

from nesop_deb import versions
from nesop_deb.builder.git import GitRepo
from nesop_deb.errors import UsageError

FETCH_TAGS = "fetch the tags: git fetch --tags --unshallow (or clone without --depth)"


@dataclass(frozen=True)
class Base:
    ref: str  # what the update compares with: a release tag, or the --since given
    commit: str
    version: str


def _release_tags(repo: GitRepo) -> list[tuple[str, Version]]:
    return [(t, v) for t in repo.tags() if (v := versions.from_tag(t)) is not None]


def _no_tags_error(repo: GitRepo, what: str, hint: str) -> UsageError:
    """A tag that is missing: in a shallow clone it is most likely only not fetched."""
    if repo.is_shallow():
        return UsageError(f"{what}: this clone is shallow, its history and tags are cut", hint=FETCH_TAGS)
    return UsageError(what, hint=hint)


def _nearest_tag(repo: GitRepo, head: str) -> tuple[str, int] | None:
    """The closest release tag in HEAD's history and how many commits HEAD is past it."""
    found = repo.git_optional("describe", "--tags", "--abbrev=0", "--match", "v[0-9]*", head)
    if found is None or versions.from_tag(found) is None:
        return None
    distance = repo.git_optional("rev-list", "--count", f"{found}..{head}")
    return found, int(distance or 0)


def _next(version: str) -> str:
    """``1.0.4`` → ``1.0.5``: a suggestion for the release after ``version``."""
    m = re.fullmatch(r"(.*?)([0-9]+)", version)
    return f"{m.group(1)}{int(m.group(2)) + 1}" if m else f"{version}.1"


def next_tag(repo: GitRepo) -> str:
    """The tag for a first release in ``repo``: v1.0.0, or the one after its highest release tag."""
    tags = _release_tags(repo)
    return f"v{_next(str(max(v for _, v in tags)))}" if tags else "v1.0.0"


def _in_history(repo: GitRepo, commit: str, head: str) -> bool | None:
    """Whether ``commit`` is in HEAD's history; None when a shallow clone cannot tell."""
    if repo.is_ancestor(commit, head):
        return True
    return None if repo.is_shallow() else False


def resolve_version(repo: GitRepo, head: str, requested: str | None) -> str:
    """``--version``, or the highest vX.Y.Z tag on HEAD."""
    if requested is not None:
        versions.parse(requested, what="--version")
        return requested
    tagged = sorted(
        (v for v in (versions.from_tag(t) for t in repo.tags_at(head)) if v is not None), reverse=True
    )
    if tagged:
        return str(tagged[0])
    nearest = _nearest_tag(repo, head)
    if nearest is not None:
        tag, distance = nearest
        where = repo.describe(repo.resolve(tag))
        raise UsageError(
            f"no version: HEAD has no vX.Y.Z tag; {tag} is on {where}, {distance} commit(s) before HEAD",
            hint=f"tag HEAD as the next release (git tag v{_next(tag[1:])}); if {tag} was never shipped,"
            f" move it here instead (git tag -f {tag})",
        )
    raise _no_tags_error(
        repo,
        "no version: HEAD has no vX.Y.Z tag and no --version was given",
        "tag the release (git tag v1.0.0); the first package of an app is a --full one (make deb-full)",
    )


def check_version(repo: GitRepo, head: str, version: str, requested: bool, since: bool, full: bool) -> None:
    """Refuse a version that does not name HEAD's content or goes back behind what HEAD contains."""
    wanted = versions.parse(version)
    for tag, v in _release_tags(repo):
        if v != wanted:
            continue
        commit = repo.resolve(tag)
        if commit != head:
            raise UsageError(
                f"version {version}: the tag {tag} is on {repo.describe(commit)}, not on HEAD",
                hint=f"to rebuild that release check it out (git checkout {tag}); for HEAD pick another",
            )
    for tag, v in sorted(_release_tags(repo), key=lambda tv: tv[1], reverse=True):
        if v > wanted and repo.is_ancestor(repo.resolve(tag), head):
            pre = v.debian_revision is not None and v.upstream_version == str(wanted)
            raise UsageError(
                f"version {version} is below {tag}, which HEAD already contains",
                hint=f"pick a version above {v} (an older version number would be a downgrade to apt)"
                + (
                    f"; for Debian {v.upstream_version}-{v.debian_revision} is above {version}: tag a"
                    f" pre-release with ~ (v{v.upstream_version}~{v.debian_revision}), which sorts below it"
                    if pre
                    else ""
                ),
            )
    if requested:
        _check_requested_names_head(repo, head, version, since, full)


def _check_requested_names_head(repo: GitRepo, head: str, version: str, since: bool, full: bool) -> None:
    """``--version X`` names HEAD's content: HEAD must carry the tag vX, or ``--since`` says which
    release the update starts from (an untagged fix branch). A ``--full`` build has no base: its
    HEAD may carry no release tag, or vX."""
    tagged = sorted(v for v in (versions.from_tag(t) for t in repo.tags_at(head)) if v is not None)
    if any(versions.compare(str(v), version) == 0 for v in tagged):
        return
    if since and not full:
        return
    if full and not tagged:
        return
    what = f"HEAD is the release v{tagged[-1]}" if tagged else "HEAD carries no release tag"
    raise UsageError(
        f"--version {version}: {what}, so the package would ship HEAD's content as {version}",
        hint=(
            f"check out v{version} (or tag HEAD: git tag v{version}), or name the release it updates"
            " with --since vX.Y.Z"
            if not full
            else f"check out v{version} (or tag HEAD: git tag v{version})"
        ),
    )


def choose_base(repo: GitRepo, head: str, version: str, since: str | None, warnings: list[str]) -> Base:
    """The release an update applies to: ``--since``, or the highest release tag below the version,
    which must be in HEAD's history."""
    if since is None:
        below = versions.highest_below(versions.parse(version), repo.tags())
        if below is None:
            raise _no_tags_error(
                repo,
                f"no release tag below {version} to compare with",
                "pass --since REF, or --full for a first install",
            )
        tag, below_version = below
        commit = repo.resolve(tag)
        known = _in_history(repo, commit, head)
        if known is None:
            warnings.append(f"this clone is shallow: whether {tag} is in HEAD's history is not checked")
        elif not known:
            raise UsageError(
                f"the base release {tag} ({repo.describe(commit)}) is not in HEAD's history: this update"
                f" would undo what {tag} shipped",
                hint=f"merge it first (git merge {tag}), or name the base on purpose with --since REF",
            )
        return Base(tag, commit, str(below_version))
    commit = repo.resolve(since)
    base_version: Version | None = versions.from_tag(since) if since in repo.tags() else None
    if base_version is None:
        tagged = [v for v in (versions.from_tag(t) for t in repo.tags_at(commit)) if v is not None]
        base_version = max(tagged) if tagged else None
    if base_version is None:
        raise UsageError(
            f"--since {since}: the commit has no vX.Y.Z release tag, so no base version is known",
            hint="pass a release tag such as v1.0.4",
        )
    if versions.compare(version, str(base_version)) <= 0:
        raise UsageError(
            f"version {version} is not above its base {base_version}",
            hint="an update must have a higher version than the release it updates",
        )
    if _in_history(repo, commit, head) is False:
        warnings.append(
            f"--since {since} is not in HEAD's history: what only {since} changed is reverted by this update"
        )
    return Base(since, commit, str(base_version))


__all__ = ["FETCH_TAGS", "Base", "check_version", "choose_base", "next_tag", "resolve_version"]
