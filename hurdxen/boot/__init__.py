"""The boot check: a Xen hypervisor and a Linux dom0 in QEMU boot every case; verdicts and crash reports."""
