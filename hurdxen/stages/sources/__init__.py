"""Sources: every pinned input (tarball, git commit, Debian package), fetched and verified into the cache."""
