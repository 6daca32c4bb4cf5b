"""Which Debian releases an end-to-end test runs on.

Every test runs on the default release (``NESOP_TESTBED_SUITE``, else Debian 13); the story a
user lives through (first install, update, migration, each failure undone, apt rollback, crash and
recovery) runs on every release the toolchain is built for, marked with :data:`every_release`.
"""

from __future__ import annotations

import pytest

from .baseroot import SUITES

every_release = pytest.mark.parametrize("suite", list(SUITES), indirect=True)

__all__ = ["every_release"]
