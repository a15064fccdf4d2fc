"""The Hurd from source: its headers, the servers and libraries a boot needs, a small userland and the root tree."""
