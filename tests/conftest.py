"""Shared fixtures. The apt archive fixtures live in tests/aptrepo.py, next to the fixture class."""

from aptrepo import apt_repo, apt_signing_key

__all__ = ["apt_repo", "apt_signing_key"]
