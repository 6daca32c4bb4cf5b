"""The server side: preflight, the apply transaction, undo, recovery and validation.

Maintainer scripts (hooks/) and ``nesop-update`` (cli/update.py) call into this package; it never
exits the process itself, it raises :class:`~nesop_deb.errors.NesopError`.
"""
