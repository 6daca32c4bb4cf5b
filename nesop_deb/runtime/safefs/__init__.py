"""Every file operation the runtime does as root inside the app's tree.

The app tree (and the database's directory) may be writable by the app's own account, which the
runtime must not trust: it can plant a symlink anywhere, at any time, and rename directories
away. So nothing here works by path. A :class:`Tree` holds a directory file descriptor; every
operation below it walks one component at a time with ``O_NOFOLLOW``, creates with ``O_EXCL``,
and sets owner and mode on the file descriptor it created. A symlink met on the way is refused
with an error naming it, except where the runtime itself puts one (a shipped symlink).

:func:`records` opens the directories root keeps its records in (``backups/``, ``logs/``) and
refuses them unless they are root's: not a symlink, owned by root, writable by nobody else.
"""

from nesop_deb.runtime.safefs.tree import (
    TMP_SUFFIX,
    LinkRefused,
    Tree,
    is_private,
    parent_of,
    records,
    root_owned,
)

__all__ = ["TMP_SUFFIX", "LinkRefused", "Tree", "is_private", "parent_of", "records", "root_owned"]
