# Stand-in Hurd boot modules for the boot check when no Hurd binaries are at hand: a static 32-bit ELF in place of
# ext2fs.static and a 32-bit shared object in place of ld.so.1. GNU Mach only has to load them as tasks.
cd "$(mktemp -d "${TMPDIR:-/tmp}/standins.XXXXXX")"
cat > ext2fs.c <<'C'
void _start(void) { for (;;) { __asm__ volatile ("" ::: "memory"); } }
C
cat > ldso.c <<'C'
int hurdxen_standin = 1;
void _dl_start(void) { for (;;) { __asm__ volatile ("" ::: "memory"); } }
C
gcc -m32 -O2 -static -nostdlib -fno-pie -no-pie -Wl,--build-id=none -o "$OUT/ext2fs.static" ext2fs.c
gcc -m32 -O2 -shared -fPIC -nostdlib -Wl,--build-id=none -Wl,-e,_dl_start -o "$OUT/ld.so.1" ldso.c
file "$OUT/ext2fs.static" "$OUT/ld.so.1"
