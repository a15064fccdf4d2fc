"""Pinned inputs: tarballs, git commits and Debian packages, verified into the content-addressed cache."""
