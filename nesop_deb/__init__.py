"""nesop-deb: ship application updates to Debian servers as transactional .deb packages."""

__version__ = "0.1.0"
