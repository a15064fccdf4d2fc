/* A stand-in ld.so: a shared object without interpreter, which is all GNU Mach's boot script needs of the second
   boot module (it is loaded, never run, by the stand-in first servers). Not glibc: its banner says so, and the
   hurd-modules stage reads "stand-in" as its libc version from it. The tests build it with
   -DLDSO_BANNER='"ld.so (Debian GLIBC 2.41-6) stable release version 2.41."' to exercise the banner checks. */
#ifndef LDSO_BANNER
#define LDSO_BANNER "ld.so (hurdxen stand-in) libc version stand-in: gcc-built from hurdxen/data/standins/ldso.c, not glibc."
#endif
__attribute__((used)) const char banner[] = LDSO_BANNER;
int _dl_start(void) { return 0; }
