"""Jinja2 templates of everything nesop-deb generates (maintainer scripts, package metadata)."""
