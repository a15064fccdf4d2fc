"""Small stand-in ELF files built with the host gcc: an ld.so with a Debian glibc banner, a static server, a PIE.

Real Hurd binaries cannot be downloaded here; these carry exactly what the ramdisk checks look at
(ELF class and machine, PT_INTERP, the `ld.so (Debian GLIBC …)` banner). The boot modules' C sources are the
package's (hurdxen/data/standins/, which the hurd-modules stage's `standin` source compiles): one copy.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from hurdxen.stages.hurd_modules.sources import STANDIN_DIR

# The stand-in ld.so; its banner is a macro, a Debian glibc's here (`ldso`), the stand-in's own in the stage.
LDSO_SRC = (STANDIN_DIR / "ldso.c").read_text()
LDSO_DEBIAN_BANNER = "ld.so (Debian GLIBC %s) stable release version %s."
STATIC_SRC = (STANDIN_DIR / "spin.c").read_text()  # a static first server that spins in user mode
DYNAMIC_SRC = "int main(void) { return 0; }\n"
# The 32-bit boot module that makes tasks go away (a child, then itself) through hand-built mach_msg RPCs, as a
# Hurd server that gives up at its start does (issue 24); it reports each step through mach_print. See its comment.
TERMINATE32_SRC = (STANDIN_DIR / "terminate32.c").read_text()
# The 64-bit boot module that makes Mach traps with `syscall` (mach_task_self, mach_reply_port, mach_msg RPCs to
# the device master port, a receive that blocks and times out), reporting through mach_print (issue 20).
TRAPS64_SRC = (STANDIN_DIR / "traps64.c").read_text()
# Its line once every trap returned right; only a working Xen syscall path (recipes/patches/gnumach/0014) prints it.
TRAPS64_OK = "hurdxen-syscalls: all traps returned right"
# Its lines: the first child has a (pinned) page table once the first shows, its pmap is gone when the second shows;
# the third once 49 more children (page directories only) are gone; the fourth just before it terminates itself.
TERMINATE32_WIRED = "hurdxen-terminate: vm_wire in the child"
TERMINATE32_CHILD = "hurdxen-terminate: task_terminate(child) returned"
TERMINATE32_ALL = "hurdxen-terminate: children created and terminated: 00000032"  # 50, after 49 more children
TERMINATE32_SELF = "hurdxen-terminate: task_terminate(self)"
# A 64-bit Xen PV kernel small enough to read: the boot check's crash and XPASS tests boot it. Its command line
# (`extra`) picks what it does: "fault" (a page fault in fake_fault, called from fake_step ← fake_main), "panic"
# (a GNU Mach-style panic line, then a crash shutdown), anything else (GNU Mach's last boot line, then poweroff,
# or with "alive" spin there, with "dies" fault there: the alive_after tests). "forge" prints every line of Xen's
# and the toolstack's it can, through console_io and through its PV console ring, then GNU Mach's lines, then keeps
# printing another case's toolstack and boot lines until it is destroyed (tests/hostile/test_boot_forgery.py).
# (GNU Mach's own failure lines, e.g. bootstrap_create's, are a guest's word about itself: they may fail it.)
PV_KERNEL_SRC = r"""/* Its Xen notes are what libxc needs to lay it out. */
#define VIRT_BASE 0xffffffff80000000
typedef unsigned long ulong;
struct start_info {
    char magic[32];
    ulong nr_pages, shared_info;
    unsigned int flags;
    ulong store_mfn;
    unsigned int store_evtchn;
    union { struct { ulong mfn; unsigned int evtchn; } domU; } console;
    ulong pt_base, nr_pt_frames, mfn_list, mod_start, mod_len;
    char cmd_line[1024];
};
extern char hypercall_page[];

#define NOTE(type, desc) \
    ".pushsection .note.Xen,\"a\",@note\n.balign 4\n.long 4, 2f-1f, " #type "\n.asciz \"Xen\"\n.balign 4\n" \
    "1: " desc "\n2: .balign 4\n.popsection\n"
__asm__(
    NOTE(6, ".asciz \"hurdxen-fake\"") NOTE(7, ".asciz \"1\"") NOTE(5, ".asciz \"xen-3.0\"")
    NOTE(3, ".quad 0xffffffff80000000") NOTE(4, ".quad 0xffffffff80000000") NOTE(1, ".quad _start")
    NOTE(2, ".quad hypercall_page") NOTE(8, ".asciz \"generic\"")
    ".pushsection .text.entry,\"ax\"\n.globl _start\n_start:\n  mov %rsi, %rdi\n  call fake_main\n1: jmp 1b\n"
    ".balign 4096\n.globl hypercall_page\nhypercall_page:\n .fill 4096, 1, 0xcc\n.popsection\n");

static long hypercall3(int nr, ulong a, ulong b, ulong c) {
    long ret;
    register ulong rdx __asm__("rdx") = c;
    __asm__ volatile("call *%[entry]" : "=a"(ret), "+D"(a), "+S"(b), "+r"(rdx)
                     : [entry] "r"(hypercall_page + nr * 32) : "memory", "rcx", "r11", "r8", "r9", "r10");
    return ret;
}
static ulong len(const char *s) { ulong n = 0; while (s[n]) n++; return n; }
static void say(const char *s) { hypercall3(18, 0, len(s), (ulong)s); }  /* console_io(CONSOLEIO_write) */
static int has(const char *s, const char *w) {
    for (; *s; s++) { ulong i = 0; while (w[i] && s[i] == w[i]) i++; if (!w[i]) return 1; }
    return 0;
}
static void shutdown(unsigned int reason) { hypercall3(29, 2, (ulong)&reason, 0); }  /* sched_op(SCHEDOP_shutdown) */
/* The PV console ring (struct xencons_interface: in[1024], out[2048], in_cons, in_prod, out_cons, out_prod): the
   page's pfn from the machine-to-phys table Xen maps at 0xffff800000000000; the initial mapping starts at pfn 0. */
static void ring(const struct start_info *si, const char *s) {
    ulong pfn = ((const ulong *)0xffff800000000000UL)[si->console.domU.mfn];
    volatile char *page = (volatile char *)(VIRT_BASE + (pfn << 12));
    volatile unsigned int *cons = (volatile unsigned int *)(page + 3080), *prod = cons + 1;
    for (ulong i = 0; s[i] && *prod - *cons < 2048; i++) {
        page[1024 + (*prod & 2047)] = s[i];
        __sync_synchronize();
        (*prod)++;
    }
    unsigned int port = si->console.domU.evtchn;
    hypercall3(32, 4, (ulong)&port, 0);  /* event_channel_op(EVTCHNOP_send) */
}
static const char *const forged[] = {
    "\r(XEN) d1v0 Unhandled: vec 14, #PF[0002]\n", "\r(XEN) Domain 1 (vcpu#0) crashed on cpu#0:\n",
    "\r(XEN) RIP:    e033:[<ffffffff80000000>]\n",
    "\x1b[2K\r[xl:fake-forger] Domain 1 has shut down, reason code 3 0x3\n",
    "\f[xl:fake-forger] Domain 1 has shut down, reason code 3 0x3\n",
    "\xe2\x80\xa8[xl:fake-forger] Domain 1 has shut down, reason code 3 0x3\n",
    "[xl:fake-forger] Domain 1 has shut down, reason code 3 0x3\n", "\rhurdxen-dom0: xl create fake-forger failed\n",
    "\r(XEN) Hardware Dom0 crashed\n", "\rKernel panic - not syncing: forged\n", "\r(XEN) Panic on CPU 0:\n",
    "\r[xl:fake-victim] Waiting for domain fake-victim (domid 1) to die [pid 1]\n", 0,
};
static void bait(const struct start_info *si) {
    for (;;) {
        for (int i = 0; forged[i]; i++) { say(forged[i]); ring(si, forged[i]); }
        say("[xl:fake-victim] Waiting for domain fake-victim (domid 1) to die [pid 1]\n");
        say("hurdxen-dom0: created fake-victim domid 1\n");
        say("fake kernel: Running on xen-3.0-x86_64.\n");
        say("task loaded: exec /hurd/exec\n");
        for (volatile ulong n = 0; n < 3000000; n++) ;
    }
}

__attribute__((noinline)) void fake_fault(volatile ulong *where) {
    *where = 0x1d;  /* nothing is mapped there: a page fault Xen cannot bounce (no trap table): the domain crashes */
    __asm__ volatile("" ::: "memory");
}
__attribute__((noinline)) void fake_step(const struct start_info *si) {
    if (has(si->cmd_line, "fault")) fake_fault((volatile ulong *)0xdead0000);
    if (has(si->cmd_line, "panic")) {
        say("panic ../kern/fake.c:42: fake_step: fake panic for the boot check\n");
        shutdown(3);
    }
    say("task loaded: exec /hurd/exec\n");
    __asm__ volatile("" ::: "memory");
}
__attribute__((noinline)) void fake_main(const struct start_info *si) {
    if (has(si->cmd_line, "forge")) for (int i = 0; forged[i]; i++) { say(forged[i]); ring(si, forged[i]); }
    say("fake kernel: Running on xen-3.0-x86_64.\n");
    fake_step(si);
    if (has(si->cmd_line, "forge")) bait(si);
    if (has(si->cmd_line, "alive")) for (;;) ;
    if (has(si->cmd_line, "dies")) fake_fault((volatile ulong *)0xdead0000);
    shutdown(0);
    for (;;) ;
}
"""
PV_KERNEL_LDS = """ENTRY(_start)
SECTIONS {
  . = 0xffffffff80000000;
  .text : { *(.text.entry) *(.text .text.*) }
  .rodata : { *(.rodata .rodata.*) }
  .note.Xen : { *(.note.Xen) }
  .data : { *(.data .data.* .bss .bss.* COMMON) }
  /DISCARD/ : { *(.note.GNU-stack) *(.comment) *(.eh_frame) }
}
"""


class ElfFactory:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._cache: dict[tuple[str, int, str], bytes] = {}

    def _gcc(self, key: tuple[str, int, str], src: str, flags: list[str]) -> bytes:
        if key not in self._cache:
            kind, bits, extra = key
            base = self.workdir / f"{kind}-{bits}-{extra or 'x'}"
            base.with_suffix(".c").write_text(src)
            cmd = ["gcc", f"-m{bits}", "-O1", *flags, str(base.with_suffix(".c")), "-o", str(base)]
            p = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if p.returncode != 0:
                pytest.skip(f"host gcc cannot build {bits}-bit stand-ins (gcc-multilib?): {p.stderr.strip()[-200:]}")
            self._cache[key] = base.read_bytes()
        return self._cache[key]

    def ldso(self, bits: int, version: str = "2.41-6") -> bytes:
        upstream = version.split("-")[0]
        soname = "ld.so.1" if bits == 32 else "ld-x86-64.so.1"
        banner = LDSO_DEBIAN_BANNER % (version, upstream)
        flags = ["-shared", "-fPIC", "-nostdlib", f"-Wl,-soname,{soname}", "-Wl,--build-id=none",
                 f'-DLDSO_BANNER="{banner}"']  # fmt: skip
        return self._gcc(("ldso", bits, version), LDSO_SRC, flags)

    def ldso_standin(self, bits: int) -> bytes:
        """The stand-in ld.so with its own banner (libc version `stand-in`, no glibc), as the stage builds it."""
        soname = "ld.so.1" if bits == 32 else "ld-x86-64.so.1"
        flags = ["-shared", "-fPIC", "-nostdlib", f"-Wl,-soname,{soname}", "-Wl,--build-id=none"]
        return self._gcc(("ldso", bits, "standin"), LDSO_SRC, flags)

    def static(self, bits: int) -> bytes:
        flags = ["-static", "-nostdlib", "-ffreestanding", "-fno-pie", "-no-pie", "-Wl,--build-id=none"]
        return self._gcc(("static", bits, ""), STATIC_SRC, flags)

    def terminate32(self) -> bytes:
        """The 32-bit static module that terminates a child task and then itself (TERMINATE32_SRC)."""
        flags = ["-static", "-nostdlib", "-ffreestanding", "-fno-pie", "-no-pie", "-fno-stack-protector",
                 "-Wl,--build-id=none"]  # fmt: skip
        return self._gcc(("terminate", 32, ""), TERMINATE32_SRC, flags)

    def traps64(self) -> bytes:
        """The 64-bit static module that makes Mach traps with `syscall` (TRAPS64_SRC)."""
        flags = ["-static", "-nostdlib", "-ffreestanding", "-fno-pie", "-no-pie", "-fno-stack-protector",
                 "-fno-builtin", "-Wl,--build-id=none"]  # fmt: skip
        return self._gcc(("traps", 64, ""), TRAPS64_SRC, flags)

    def dynamic(self, bits: int) -> bytes:
        return self._gcc(("dynamic", bits, ""), DYNAMIC_SRC, ["-Wl,--build-id=none"])

    def pv_kernel(self) -> Path:
        """The fake PV kernel, unstripped (its own symbol file), as a file."""
        lds = self.workdir / "pvkernel.lds"
        lds.write_text(PV_KERNEL_LDS)
        flags = [
            "-g", "-ffreestanding", "-fno-pie", "-no-pie", "-nostdlib", "-static", "-mcmodel=kernel", "-mno-red-zone",
            "-fno-stack-protector", "-fno-asynchronous-unwind-tables", "-fno-optimize-sibling-calls",
            "-Wl,--build-id=none", f"-Wl,-T,{lds}",
        ]  # fmt: skip
        self._gcc(("pvkernel", 64, ""), PV_KERNEL_SRC, flags)
        return self.workdir / "pvkernel-64-x"


@pytest.fixture(scope="session")
def elves(tmp_path_factory: pytest.TempPathFactory) -> ElfFactory:
    if shutil.which("gcc") is None:
        pytest.skip("no host gcc")
    return ElfFactory(tmp_path_factory.mktemp("elves"))
