"""hurdxen: build, verify, boot and publish everything needed to run GNU/Hurd as a Xen PV guest."""

__version__ = "0.1.0"
