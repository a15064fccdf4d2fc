"""Plain helpers every layer uses: errors, quoting, atomic files, archives, checked extraction, locks, the monitor."""
