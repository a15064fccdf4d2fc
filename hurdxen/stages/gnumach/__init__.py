"""GNU Mach for Xen: the prepared source tree, the variants, prebuilt kernels."""
