"""GNU Mach for Xen: the prepared source tree, the variants, prebuilt kernels."""

STAGE = "gnumach"  # the doit basename and the directory under artifacts/, for every task of the stage
