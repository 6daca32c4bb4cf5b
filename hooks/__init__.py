"""The maintainer-script side of update packages.

dpkg runs an update package's ``preinst``/``postinst``/``prerm``/``postrm`` shims (rendered from
templates/); each execs ``python -m nesop_deb.hooks SCRIPT PACKAGE VERSION ARGS...``, which maps
dpkg's arguments to an :class:`~nesop_deb.hooks.dispatch.Intent` and hands it to the runtime.
"""
