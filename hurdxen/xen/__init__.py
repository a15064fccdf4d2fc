"""What Xen's loader sees in a kernel (ELF facts, libelf's parse) and the checks made on it."""
