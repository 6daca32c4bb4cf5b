"""Integration tests: the builder against real git, dpkg-deb and lintian in temporary directories."""
