"""The app's virtualenv: built offline from the wheels updates shipped, switched by one rename.

Where things are (paths from :class:`~nesop_deb.runtime.context.Context`):

- the wheel store ``/var/lib/<package>/wheels``: every wheel an update shipped, root's, 0700;
  an update ships only the wheels its base's requirements did not pin, so the store is what the
  next build for this server may count on;
- the virtualenvs ``/opt/venvs/<package>/<id>``: root's, one per (Python, requirements text),
  built by root's installer with ``--no-index --require-hashes`` from the store alone;
- ``<app root>/<venv>``: a symlink to the active one, replaced by one ``rename(2)``.

The environments live outside the app tree on purpose: the installer writes by path, and the app
tree may be writable by the app's account, which could swap a directory for a link while root
writes there. Under ``/opt/venvs`` every parent is root's.

The transaction uses :func:`prepare` before the stop (the new environment is built and its
imports checked while the old app serves) and :func:`switch` inside the outage; a backup records
what the link was (:func:`record`), and :func:`put_back` restores it for an undo, a recovery or a
rollback. :func:`prune` drops environments and wheels no backup can reach any more.
"""

from __future__ import annotations

from nesop_deb.runtime.deps.link import (
    ADOPTED_SUFFIX,
    Live,
    check_link,
    put_back,
    read,
    record,
    restore_from,
    switch,
)
from nesop_deb.runtime.deps.report import Report, report
from nesop_deb.runtime.deps.retention import prune
from nesop_deb.runtime.deps.store import check_available, verify_shipped
from nesop_deb.runtime.deps.target import check_target
from nesop_deb.runtime.deps.venvs import discard, env_id, env_path, prepare

__all__ = [
    "ADOPTED_SUFFIX",
    "Live",
    "Report",
    "check_available",
    "check_link",
    "check_target",
    "discard",
    "env_id",
    "env_path",
    "prepare",
    "prune",
    "put_back",
    "read",
    "record",
    "report",
    "restore_from",
    "switch",
    "verify_shipped",
]
