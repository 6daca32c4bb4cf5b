"""The size benchmark's own releases come after the example's newest, whatever that is."""

from __future__ import annotations

from bench import size


def test_the_assets_and_the_fix_take_the_next_minor_version() -> None:
    tags = ["v1.0.0", "v1.2.2", "v1.10.3", "v1.3.1", "not-a-release", "v2.0.0-rc1"]
    assert size.next_versions(tags) == ("1.11.0", "1.11.1")
