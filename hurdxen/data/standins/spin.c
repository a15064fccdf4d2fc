/* A stand-in first boot server that makes no system call: it spins in user mode, which proves the kernel got to
   user mode and stays up there (a boot case's alive_after). */
void _start(void) { for (;;) ; }
