"""End-to-end tests: the project's packages installed by dpkg/apt on booted Debian 13 and 12 containers."""
