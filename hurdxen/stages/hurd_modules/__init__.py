"""The hurd-modules ramdisk Xen hands GNU Mach: its format, its ELF checks, its tools."""
