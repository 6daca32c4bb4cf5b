"""The migration naming rule and the names it suggests for files that would never run."""

from __future__ import annotations

import shlex

import pytest

from nesop_deb.builder.migrations import check_names, is_migration_file
from nesop_deb.errors import BuildError


@pytest.mark.parametrize(
    ("path", "suggested"),
    [
        ("db/0003-add-tags.sql", "db/0003_add-tags.sql"),
        ("db/003_x.sql", "db/0003_x.sql"),
        ("db/0003_tags.SQL", "db/0003_tags.sql"),
        ("db/3 add tags.sql", "db/0003_add_tags.sql"),
        ("db/0003-x.rollback.sql", "db/0003_x.rollback.sql"),
        ("db/schema.sql", "db/0008_schema.sql"),  # no number: the next free one
        ("db/12345_big.sql", "db/0008_big.sql"),  # five digits would sort wrong cut to four
    ],
)
def test_a_name_the_engine_skips_is_refused_with_a_name_it_runs(path: str, suggested: str) -> None:
    tree = ["db/0001_init.sql", "db/0007_last.sql", "db/0007_last.rollback.sql", path]
    with pytest.raises(BuildError) as caught:
        check_names([path], "db", tree)
    assert path in str(caught.value)
    assert f"git mv {shlex.quote(path)} {suggested}" in (caught.value.hint or "")
    assert is_migration_file(suggested, "db")


def test_a_migration_in_a_subdirectory_is_refused() -> None:
    with pytest.raises(BuildError, match="subdirectory of db/ never run") as caught:
        check_names(["db/v2/0002_x.sql"], "db")
    assert "db/0002_x.sql" in (caught.value.hint or "")


@pytest.mark.parametrize(
    "path",
    ["db/0001_init.sql", "db/0001_init.rollback.sql", "db/README.md", "db/sub/notes.txt", "app/x.sql"],
)
def test_what_is_not_a_misnamed_migration_passes(path: str) -> None:
    check_names([path], "db")


def test_a_rollback_without_its_migration_is_refused() -> None:
    tree = ["db/0002_tags.sql", "db/0002_tag.rollback.sql"]
    with pytest.raises(BuildError, match=r"a rollback with no migration db/0002_tag\.sql"):
        check_names(["db/0002_tag.rollback.sql"], "db", tree)
    check_names(["db/0002_tags.sql"], "db", tree)  # the migration itself is fine
