"""Boot check: a real Xen (built from the pinned tarball) in QEMU boots Debian's prebuilt 32-bit gnumach-xen kernel
with a ramdisk of stand-in modules. Slow (QEMU/TCG) and needs the Docker engine; everything built is cached by
identity under $HURDXEN_CACHE (default: <repo>/cache), so reruns only boot."""

from __future__ import annotations

import functools
import gzip
import json
import re
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
from debian_kernels import fetch_kernel
from elfstandins import (
    TERMINATE32_ALL,
    TERMINATE32_CHILD,
    TERMINATE32_SELF,
    TERMINATE32_SRC,
    TERMINATE32_WIRED,
    TRAPS64_OK,
    ElfFactory,
    elves,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from hurdxen.boot import cases as bootcases
from hurdxen.boot import diag as bootdiag
from hurdxen.boot import images as bootimages
from hurdxen.boot import run as bootrun
from hurdxen.boot import stage as boot
from hurdxen.core.errors import HurdxenError
from hurdxen.core.monitor import ConsoleMonitor
from hurdxen.stages.hurd_modules.ramdisk import Module, build_ramdisk

__all__ = ["elves"]  # the fixture, imported for pytest

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "artifacts"

# ---------------------------------------------------------------------------------------------------------------
# Fast tests: cpio, verdicts, configs (no Docker, no QEMU)


def _parse_newc(data: bytes) -> list[tuple[str, int, int, int, bytes]]:
    out, pos = [], 0
    while True:
        assert data[pos : pos + 6] == b"070701"
        f = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = f[11], f[6]
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        pos = (pos + 110 + namesize + 3) & ~3
        body = data[pos : pos + filesize]
        pos = (pos + filesize + 3) & ~3
        if name == "TRAILER!!!":
            return out
        out.append((name, f[0], f[1], f[5], body))


def test_cpio_is_deterministic_and_complete() -> None:
    entries = [
        bootimages.CpioEntry("usr/lib/b", stat.S_IFREG | 0o755, b"bb"),
        bootimages.CpioEntry("a", stat.S_IFREG | 0o644, b"a"),
        bootimages.CpioEntry("lib64/ld", stat.S_IFLNK | 0o777, b"/lib/x"),
    ]
    one = bootimages.write_cpio(entries, 1234)
    assert one == bootimages.write_cpio(list(reversed(entries)), 1234)
    assert len(one) % 512 == 0
    parsed = _parse_newc(one)
    names = [p[0] for p in parsed]
    assert names == ["a", "lib64", "lib64/ld", "usr", "usr/lib", "usr/lib/b"]
    assert [p[1] for p in parsed] == list(range(1, 7))  # inodes in order
    assert {p[3] for p in parsed} == {1234}
    assert parsed[-1][4] == b"bb"
    if shutil.which("cpio"):
        import subprocess

        listing = subprocess.run(["cpio", "-it"], input=one, capture_output=True, check=True).stdout.decode()
        assert listing.split() == names
    assert bootimages.gzip_n(one) == bootimages.gzip_n(one)


def _case(**kw: object) -> bootcases.BootCase:
    d: dict[str, object] = {"name": "c", "kind": "guest", "kernel": Path("k"), "expect": ("GNU Mach", "task loaded")}
    d.update(kw)
    return bootcases.BootCase(**d)  # type: ignore[arg-type]


def _verdict(c: bootcases.BootCase, text: str, over: bool = False) -> tuple[str, str] | None:
    v = bootcases.judge(c, text, over)
    return None if v is None else (v[0], v[1])


def test_verdicts() -> None:
    c = _case()
    up = "hurdxen-dom0: created c domid 1\n"
    assert _verdict(c, up + "(d1) GNU Mach 1.8\n") is None
    assert _verdict(c, up + "(d1) GNU Mach 1.8\n(d1) task loaded: x\n") == ("pass", "")
    assert _verdict(c, up + "(d1) GNU Mach\n(XEN) Panic on CPU 0\n(d1) task loaded")[0] == "fail"  # type: ignore[index]
    assert _verdict(c, up + "(d1) GNU Mach\n(d1) task loaded\n(XEN) Panic on CPU 0\n") == ("pass", "")
    assert _verdict(c, "[c] GNU Mach\n", True) == ("fail", "timeout; last guest line: 'GNU Mach'; missing: task loaded")
    assert _verdict(c, "GNU Mach\n", True) == ("fail", "timeout; no guest output; missing: GNU Mach; task loaded")
    assert _verdict(c, "hurdxen-dom0: xl create c failed\n")[0] == "fail"  # type: ignore[index]
    r = _case(expect=(), expect_refusal="not supported")
    assert _verdict(r, "[xl:c] xc: not supported by xen kernel\nhurdxen-dom0: xl create c failed")[0] == (
        "expected-refusal"
    )
    assert _verdict(r, "hurdxen-dom0: created c domid 1\n") is None
    assert _verdict(r, "hurdxen-dom0: created c domid 1\n", True)[0] == "fail"  # type: ignore[index]


AMD64_CRASH = """hurdxen-dom0: created c domid 3
(d3) GNU Mach 1.8
(d3) kernel virtual area: ffffffff88000000-ffffffffc6800000
(XEN) d3v0 Unhandled: vec 14, #PF[0000]
(XEN) Pagetable walk from ffffffff7ffffff0:
(XEN)  L4[0x1ff] = 000000002f2f9067 00000000000000f9
(XEN) Domain 3 (vcpu#0) crashed on cpu#0:
(XEN) RIP:    e033:[<ffffffff80030c90>]
(XEN) rbp: 0000000080000000   rsp: ffffffff800ac2f0   r8:  ffffffff80100000
(XEN) cr3: 000000002f2f8000   cr2: ffffffff7ffffff0
(XEN) Guest stack trace from rsp=ffffffff800ac2f0:
(XEN)    0000000000000000 ffffffff80030c91 00000000deadbeef
(XEN)    ffffffff80030c91
"""
SHUT = "[xl:c] Domain 3 has shut down, reason code 3 0x3\n"


def test_known_failures_are_judged_when_the_case_ends() -> None:
    """A known failure is a signature of how the case ends; it is judged then, never on a progress line."""
    kf = bootcases.KnownFailure("crash", "site_fn", "x86_64 pmap")
    k = _case(expect=("GNU Mach", "task loaded"), known_failure=kf)
    assert _verdict(k, "hurdxen-dom0: created c domid 3\n(d3) GNU Mach 1.8\n") is None
    # The crash is seen, but its report is settled only when xl says the domain is gone (or the case is over).
    assert bootcases.judge(k, AMD64_CRASH, False) is None
    v = bootcases.judge(k, AMD64_CRASH + SHUT, False)
    assert v is not None and v[0] == "fail" and "fails differently from its record" in v[1]  # no symbols: a raw RIP
    assert v[2] is not None and v[2].crash is not None
    crash = v[2].crash
    assert (crash.domid, crash.vector, crash.error_code, crash.rip, crash.cr2) == (
        3, 14, 0, 0xFFFFFFFF80030C90, 0xFFFFFFFF7FFFFFF0)  # fmt: skip
    assert crash.stack == (0, 0xFFFFFFFF80030C91, 0xDEADBEEF, 0xFFFFFFFF80030C91)
    assert v[2].headline.startswith("page fault at ffffffff7ffffff0 at RIP ffffffff80030c90")
    # Another domain's crash is not this case's.
    assert bootcases.judge(k, AMD64_CRASH.replace("domid 3", "domid 4"), False) is None
    # The panic signature.
    p = _case(known_failure=bootcases.KnownFailure("panic", "set_cr3", "next bug"))
    panic = "hurdxen-dom0: created c domid 2\n(d2) panic ../i386/intel/pmap.c:3315: pmap_set_page_dir: set_cr3\n"
    v = bootcases.judge(p, panic, False)
    assert v is not None and v[0] == "known-failure" and v[2] is not None and v[2].panic is not None
    assert v[2].headline == "panic in pmap_set_page_dir (i386/intel/pmap.c:3315): set_cr3"
    # Passing its expectations despite the record: XPASS, which is not ok.
    xp = bootcases.judge(p, "hurdxen-dom0: created c domid 2\n(d2) GNU Mach\n(d2) task loaded: x\n", False)
    assert xp is not None and xp[0] == "xpass" and "passing further than recorded" in xp[1]
    res = bootcases.BootResult(p, "xpass", 1.0, Path("l"), ())
    assert not res.ok
    # A timeout is an ending too: its signature is the guest's last line.
    t = _case(known_failure=bootcases.KnownFailure("timeout", "kernel virtual area", "hangs"))
    hang = "hurdxen-dom0: created c domid 5\n(d5) GNU Mach 1.8\n(d5) kernel virtual area: c8000000\n"
    assert bootcases.judge(t, hang, False) is None
    assert _verdict(t, hang, True) == (
        "known-failure",
        "hangs [timeout; last guest line: 'kernel virtual area: c8000000']",
    )
    # GNU Mach's own trap report before its kernel_trap panic: the panic's ending names the trap.
    trap = (
        "hurdxen-dom0: created c domid 5\n(d5) start ext2fs: Kernel General protection trap, eip 0xffffffff800054ca,"
        " code 0, cr2 0\n(d5) kernel trap, type 13, code = 0\n(d5) trapno 13: General protection, error 00000000\n"
        "(d5) panic /usr/src/gnumach/i386/i386/trap.c:346: kernel_trap: trap\n"
    )
    v = bootcases.judge(_case(known_failure=bootcases.KnownFailure("panic", "ffffffff800054ca", "swapgs")), trap, False)
    assert v is not None and v[0] == "known-failure" and v[2] is not None and v[2].crash is not None, v
    assert v[2].crash.rip == 0xFFFFFFFF800054CA and v[2].crash.vector == 13
    assert v[2].headline == (
        "general protection fault at RIP ffffffff800054ca; panic in kernel_trap (i386/i386/trap.c:346): trap"
    )
    # The quick path: GNU Mach as dom0 crashes; Xen's own line settles it.
    q = _case(kind="dom0", known_failure=bootcases.KnownFailure("crash", "", "dom0 crash"))
    dom0_crash = AMD64_CRASH.replace("d3v0", "d0v0").replace("Domain 3", "Domain 0")
    assert bootcases.judge(q, dom0_crash, False) is None
    v = bootcases.judge(q, dom0_crash + "(XEN) Hardware Dom0 crashed: 'noreboot' set - not rebooting.\n", False)
    assert v is not None and v[0] == "known-failure", v
    # Untrusted input: garbage, huge numbers and endless lines never raise.
    junk = "(XEN) d1v0 Unhandled: vec 999999, #PF[zz]\n(XEN) RIP: e033:[<" + "f" * 5000 + ">]\n" + "x" * 100000
    assert bootcases.judge(_case(), "hurdxen-dom0: created c domid 1\n" + junk, True) is not None


def test_alive_after() -> None:
    """With `alive_after`, a case passes only once its guest has kept running that long after its expected lines;
    an ending in the meantime (a crash, a shutdown) is judged as such."""
    c = _case(alive_after=5.0)
    up = "hurdxen-dom0: created c domid 3\n(d3) GNU Mach 1.8\n(d3) task loaded: x\n"
    assert bootcases.expectations_met(c, up) and not bootcases.expectations_met(c, up.replace("task", "none"))
    assert bootcases.judge(c, up, False, 4.9) is None
    assert _verdict(_case(), up) == ("pass", "")  # without it: as soon as the lines are in
    v = bootcases.judge(c, up, False, 5.0)
    assert v is not None and v[:2] == ("pass", "")
    v = bootcases.judge(c, up, True, 2.0)
    assert v is not None and v[0] == "fail" and v[1] == "timed out 2.0 s after the expected lines (alive_after 5 s)"
    # It crashes after its last line: open until the crash report is settled, then a failure that says so.
    crash = AMD64_CRASH.replace("(d3) GNU Mach 1.8\n", "(d3) GNU Mach 1.8\n(d3) task loaded: x\n")
    # Without alive_after it passes as soon as its lines are in; what ended it after them shows in the detail.
    assert _verdict(_case(), crash) == ("pass", "then page fault at ffffffff7ffffff0 at RIP ffffffff80030c90")
    assert bootcases.judge(c, crash, False, 9.0) is None
    v = bootcases.judge(c, crash + SHUT, False, 0.5)
    assert v is not None and v[0] == "fail" and v[2] is not None and v[2].kind == "crash", v
    assert v[1].startswith("page fault at ffffffff7ffffff0")
    assert v[1].endswith("after every expected line (alive_after 5 s)")
    v = bootcases.judge(c, up + "[xl:c] Domain 3 has shut down, reason code 0 0x0\n", False, 0.5)
    assert v is not None and v[0] == "fail" and v[1].startswith("the guest shut down (poweroff) after every"), v
    kf = _case(alive_after=5.0, known_failure=bootcases.KnownFailure("crash", "ffffffff80030c90", "dies later"))
    assert _verdict(kf, crash + SHUT)[0] == "known-failure"  # type: ignore[index]


@given(st.lists(st.sampled_from([
    "(XEN) d1v0 Unhandled: vec 14, #PF[0002]", "(XEN) Domain 1 (vcpu#0) crashed on cpu#0:",
    "(XEN) RIP:    e033:[<ffffffff80030c90>]", "(XEN) cr3: 0000000000001000   cr2: ffffffff7ffffff0",
    "(XEN) Guest stack trace from rsp=ffffffff800ac2f0:", "(XEN)    ffffffff80030c91 0000000000000000",
    "(d1) panic ../kern/x.c:1: f: m", "(d1) panic x", "(XEN) RIP: e033:[<" + "f" * 40 + ">]", "garbage \x00\xff",
    "(XEN) " + "0" * 16 + " " * 3, "(XEN) d99999999v0 Unhandled: vec 1", "(d1) " + "x" * 5000,
]), max_size=200), st.text(max_size=300))  # fmt: skip
@settings(max_examples=150, deadline=None)
def test_crash_parsing_never_raises_and_stays_bounded(lines: list[str], noise: str) -> None:
    """Xen's lines come through a guest we do not trust: any mix parses without raising, within bounds."""
    text = "\n".join([*lines, noise])
    crash = bootdiag.find_crash(text, 1)
    if crash is not None:
        assert len(crash.stack) <= bootdiag.MAX_STACK_WORDS and len(crash.lines) <= bootdiag.MAX_CRASH_LINES
        assert all(len(ln) <= bootdiag.MAX_LINE for ln in crash.lines)
        crash.headline()
    bootdiag.find_panic(text.split("\n"))
    bootcases.judge(_case(known_failure=FAKE_KF), "hurdxen-dom0: created c domid 1\n" + text, True)


def test_sessions_share_out_alive_windows() -> None:
    """Longest first onto the least loaded session: two alive windows never queue in one session; order kept."""

    def case(name: str, alive: float = 0.0) -> bootcases.BootCase:
        return bootcases.BootCase(name, "guest", Path("k"), expect=("x",), alive_after=alive, timeout=60)

    guests = [case("pae", 3), case("nopae"), case("amd64", 3), case("grub32"), case("grub64")]
    parts = bootrun.share_out(guests, 2)
    assert [[c.name for c in p] for p in parts] == [["pae", "nopae", "grub64"], ["amd64", "grub32"]]
    assert [[c.name for c in p] for p in bootrun.share_out(guests, 1)] == [[c.name for c in guests]]
    assert sorted(c.name for p in bootrun.share_out(guests, 4) for c in p) == sorted(c.name for c in guests)


def test_a_guest_sees_only_its_own_lines() -> None:
    """The previous guest is destroyed in the background: its late lines must not count for the next one."""
    c = _case()
    late = "(d1) task loaded: x\n[xl:prev] Domain 1 has shut down, reason code 3 0x3\n[prev] GNU Mach\n"
    assert _verdict(c, late + "[xl:c] Waiting for domain c (domid 2) to die [pid 9]\n(d2) GNU Mach\n") is None
    assert _verdict(c, "[xl:c] Waiting for domain c (domid 2) to die\n" + late + "(d2) GNU Mach\n") is None
    text = "[xl:c] Waiting for domain c (domid 2) to die\n" + late + "(d2) GNU Mach\n(d2) task loaded: y\n"
    assert _verdict(c, text) == ("pass", "")
    assert "(d1)" not in bootcases.own_lines(c, text) and "[prev]" not in bootcases.own_lines(c, text)


def test_terminate_standin_is_a_boot_module_that_calls_mach(elves: ElfFactory) -> None:
    """The task-terminate stand-in passes the ramdisk's module check as a 32-bit static server and enters the kernel
    the i386 way: `lcall $7,$0` (9a 00 00 00 00 07 00) after the trap number in %eax, for the four traps it uses."""
    from hurdxen.stages.hurd_modules.elf import check_module, variant_for

    data = elves.terminate32()
    assert check_module("ext2fs.static", "static", data, variant_for(32), "2.41-6").interp is None
    lcall = bytes.fromhex("9a00000000 0700")
    for trap in (-25, -26, -28, -30):  # mach_msg_trap, mach_reply_port, mach_task_self, mach_print
        assert b"\xb8" + trap.to_bytes(4, "little", signed=True) + lcall in data, trap


def test_guest_config_and_bad_names(tmp_path: Path) -> None:
    c = _case(ramdisk=Path("r"))
    cfg = bootrun.guest_config(c)
    assert "type = 'pv'" in cfg and "ramdisk = '/guests/c/ramdisk'" in cfg and "on_crash = 'preserve'" in cfg
    # A recipe value goes through xl's quoting: a quote stays inside the string, a newline is refused.
    assert 'extra = "x\'\\"y"' in bootrun.guest_config(_case(cmdline="x'\"y"))
    with pytest.raises(HurdxenError, match="control character"):
        bootrun.guest_config(_case(cmdline='x"\nkernel = "/etc/evil'))
    g = bootrun.guest_config(_case(kind="pvgrub", kernel=None, pvgrub=Path("p")))
    assert "kernel = '/guests/c/pvgrub'" in g and "extra" not in g
    hv = bootimages.HypervisorResult(tmp_path / "xen", tmp_path / "c", "i", "s", 0.0, True)
    with pytest.raises(HurdxenError, match="plain file name"):
        bootrun.run_boot_checks([_case(name="a b")], hv, None, tmp_path)
    with pytest.raises(HurdxenError, match="not a staged path"):
        bootrun.qemu_command(tmp_path / "x,y", [], "")


def test_an_unknown_name_in_boot_cases_is_one_error_line() -> None:
    """HURDXEN_BOOT_CASES with a typo used to boot nothing and publish an empty report over the last one."""
    from hurdxen.pipeline import recipes
    from hurdxen.stages.gnumach import stage as gnumach

    r = recipes.load(REPO)
    kernels = [*gnumach.variant_specs(r), *gnumach.prebuilt_specs(r)]
    with pytest.raises(
        HurdxenError, match=r"^error: HURDXEN_BOOT_CASES: no case named 'xen-pea' in recipes/boot.toml"
    ) as e:
        boot.specs(r, kernels, [], [], [], ("xen-pae", "xen-pea"))
    assert "xen-pae" in (e.value.hint or "")


def test_opt_in_cases_are_left_out_unless_named() -> None:
    """`doit boot` leaves out a case marked opt-in and one that boots an opt-in input (a debian-ports ramdisk a
    fresh machine cannot fetch would otherwise fail the whole check), and does not wait for their inputs;
    HURDXEN_BOOT_CASES names any case."""
    import dataclasses

    from hurdxen.pipeline import recipes
    from hurdxen.plan import make_plan

    plan = make_plan(recipes.load(REPO))
    check = next(s for s in plan.boot if isinstance(s, boot.CheckSpec))
    default = {c.name for c in check.selected()}
    assert "hurd-i386-disk" in default and "xen-pae" in default
    # The stand-in cases boot the stand-in ramdisks the hurd-modules stage builds: on the default recipes, a 64-bit
    # case whose task makes system calls (issue 20), directly and through pv-grub2.
    standins = {"xen-pae-standin-task-terminate", "xen-amd64-standin-traps", "pvgrub-x86_64-standin-traps"}
    assert standins <= default
    assert "xen-amd64" not in default  # its ramdisk, hurd-amd64 from debian-ports, is opt-in
    for c in check.cases:
        if set(c.inputs().values()) & plan.opt_in():
            assert c.name not in default
    assert not {c.name for c in check.cases if c.opt_in} & default
    assert not {p.task for p in check.producers} & plan.opt_in()  # the check does not build an opt-in ramdisk
    assert {n for n, _ in check.left_out()} == {c.name for c in check.cases} - default
    assert all(why.startswith("opt-in") for _, why in check.left_out())
    named = dataclasses.replace(check, only=("xen-amd64", "xen-pae"))
    assert [c.name for c in named.selected()] == ["xen-pae", "xen-amd64"]  # recipe order
    assert dict(named.left_out())["hurd-i386-disk"] == "not named in HURDXEN_BOOT_CASES"
    assert next(c for c in check.cases if c.name == "pvgrub-i386-disk").inputs() == {
        "pvgrub": "pvgrub2:i386-xen-disk",
        "disk": "rootdisk:hurd-i386",
    }


def test_the_64_bit_hurd_case_is_opt_in_and_boots_the_x86_64_disk() -> None:
    """hurd-amd64-disk (an hour of 64-bit toolchain, cold): left out of `doit boot` unless named; it boots the
    xen-amd64 kernel with hurd-amd64's ramdisk and the x86_64-gnu root disk, to the shell's lines."""
    from hurdxen.pipeline import recipes

    rec = boot.recipe_from(recipes.load(REPO)["boot"], 1)
    case = next(c for c in rec.cases if c.name == "hurd-amd64-disk")
    assert case.opt_in and "hurdxen-shell: six times seven is 42" in case.expect and case.alive_after >= 1
    assert case.inputs() == {
        "kernel": "gnumach:xen-amd64", "ramdisk": "hurd-modules:hurd-amd64", "disk": "rootdisk:hurd-amd64"
    }  # fmt: skip


def test_recipe_and_stage_inputs() -> None:
    from hurdxen.pipeline import recipes
    from hurdxen.pipeline.context import make_context

    r = recipes.load(REPO)
    rec = boot.recipe_from(r["boot"], 1234)
    byname = {c.name: c for c in rec.cases}
    assert byname["xen-nopae"].expect_refusal
    # The 64-bit kernel boots to its boot tasks (recipes/patches/gnumach/0002-0012): plain expect cases; its guest
    # and the 32-bit one keep running in user mode after them.
    for name in ("xen-amd64", "pvgrub-x86_64-standalone"):
        assert byname[name].known_failure is None and "task loaded: exec /hurd/exec" in byname[name].expect
    assert byname["xen-amd64"].alive_after >= 1 and byname["xen-pae"].alive_after >= 1
    assert byname["pvgrub-i386-standalone"].kind == "pvgrub" and byname["quick-xen-pae"].kind == "dom0"
    # The stand-in that terminates tasks (issue 24): the recipe case waits for exactly the lines it prints, in order,
    # and for the kernel to keep running after the last (the panic came right after it).
    term = byname["xen-pae-standin-task-terminate"]
    lines = (TERMINATE32_WIRED, TERMINATE32_CHILD, TERMINATE32_ALL, TERMINATE32_SELF)
    assert term.expect[1:] == lines and term.alive_after >= 1
    for line in lines:  # what its say() prints after "hurdxen-terminate: " (and before a number)
        assert f'say("{line.removeprefix("hurdxen-terminate: ").split(": 0")[0]}' in TERMINATE32_SRC
    assert dict(rec.hypervisor.config) == {"CONFIG_EXPERT": "y", "CONFIG_PV32": "y", "CONFIG_VERBOSE_DEBUG": "y"}
    assert rec.hypervisor.identity("img") != rec.hypervisor.identity("other-img")
    kf = {"crash_in": "pmap_bootstrap_xen", "reason": "r"}
    recorded = boot.recipe_from({**r["boot"], "cases": [{"name": "k", "kernel": "xen-amd64", "known_failure": kf}]}, 1)
    assert recorded.cases[0].known_failure == bootcases.KnownFailure("crash", "pmap_bootstrap_xen", "r")
    # The debug hypervisor: one more Kconfig option, its own identity (built beside the default one).
    debug = boot.recipe_from({**r["boot"], "xen": {**r["boot"]["xen"], "debug": True}}, 1234).hypervisor
    assert dict(debug.build_config)["CONFIG_DEBUG"] == "y" and "CONFIG_DEBUG" not in dict(rec.hypervisor.build_config)
    assert debug.identity("img") != rec.hypervisor.identity("img")
    ctx = make_context(r)
    files = boot.case_inputs(ctx, byname["xen-pae"])
    assert files["kernel"].parent.name == "xen-pae" and files["ramdisk"].name == "hurd-modules"
    # The stand-in cases boot the stand-in ramdisks by name (hurd-modules' standin source), never hurd-i386's.
    assert term.ramdisk == "standin-i386-terminate" and not term.opt_in
    traps = byname["xen-amd64-standin-traps"]
    assert traps.ramdisk == "standin-amd64-traps" and TRAPS64_OK in traps.expect and not traps.opt_in
    assert boot.case_inputs(ctx, traps)["ramdisk"].parent.name == "standin-amd64-traps"
    via_grub = byname["pvgrub-x86_64-standin-traps"]
    assert via_grub.pvgrub == "x86_64-xen-standin" and TRAPS64_OK in via_grub.expect
    with pytest.raises(HurdxenError, match="is missing"):
        boot.resolve_case(make_context(r), boot.CaseSpec(
            "x", "guest", "no-such-variant", None, None, (), None, None, "", 128, 10.0))  # fmt: skip
    bad = dict(r["boot"])
    bad["cases"] = [{"name": "p", "kind": "pvgrub"}]
    with pytest.raises(HurdxenError, match="needs `pvgrub`"):
        boot.recipe_from(bad, 1)
    alive = {"name": "a", "kernel": "xen-pae", "expect": ["x"], "alive_after": 5}
    assert boot.recipe_from({**r["boot"], "cases": [alive]}, 1).cases[0].alive_after == 5.0
    for case in ({**alive, "timeout": 5}, {**alive, "expect": []}):
        with pytest.raises(HurdxenError, match=r"cases\[0\] \(a\)\.alive_after: 5 s needs `expect` and less than"):
            boot.recipe_from({**r["boot"], "cases": [case]}, 1)


def test_boot_stages_are_contract_specs_from_the_plan() -> None:
    """The boot stage's three tasks come from the plan like every stage's: task, doc, identity, outputs, deps; the
    hypervisor's and the dom0's identities are their builds' (the cache under cache/boot/ keeps its keys); a case
    naming an output no stage makes fails at plan time as one HurdxenError naming the file and key."""
    from hurdxen.pipeline import recipes
    from hurdxen.pipeline.context import make_context
    from hurdxen.plan import make_plan

    r = recipes.load(REPO)
    ctx = make_context(r)
    plan = make_plan(r)
    hv, dom0, check = plan.boot
    assert isinstance(hv, boot.HypervisorStageSpec) and isinstance(dom0, boot.Dom0StageSpec)
    assert isinstance(check, boot.CheckSpec)
    assert [s.task for s in plan.boot] == ["boot:hypervisor", "boot:dom0", bootcases.CHECK_TASK]
    assert set(boot.BUILDS) == {type(s) for s in plan.boot}
    rec = boot.recipe_from(r["boot"], ctx.source_date_epoch)
    assert hv.identity(ctx) == rec.hypervisor.identity(ctx.image_tag(rec.image))
    assert dom0.identity(ctx) == rec.dom0.identity(ctx.image_tag(rec.dom0_image))
    assert boot.hypervisor_dir(ctx, hv.hypervisor, ctx.image_tag(hv.image)).name == f"xen-{hv.identity(ctx)}"
    assert check.outputs(ctx) == {bootcases.REPORT: ctx.artifacts / "boot" / "check" / bootcases.REPORT_FILE}
    assert set(hv.outputs(ctx)) == {"xen", "config"} and set(dom0.outputs(ctx)) == {"kernel", "initrd"}
    deps = check.deps(ctx)
    assert deps.tasks[:2] == ("boot:hypervisor", "boot:dom0") and "gnumach:xen-pae" in deps.tasks
    assert ctx.artifacts / "gnumach" / "xen-pae" / "gnumach-xen-pae.gz" in deps.files
    assert hv.deps(ctx).tasks[-1] == "sources:xen-orig-tarball"
    # Stable: the same recipes make the same identities; what a case boots, or which cases, changes the check's.
    assert make_plan(r).boot[2].identity(ctx) == check.identity(ctx)
    fewer = boot.specs(r, plan.kernels, plan.hurd_modules, plan.pvgrub2, plan.rootdisks, only=("xen-pae",))
    assert fewer[2].identity(ctx) != check.identity(ctx) and [c.name for c in fewer[2].selected()] == ["xen-pae"]
    assert fewer[0] == hv and fewer[1] == dom0
    bad = recipes.load(REPO, overrides={"boot.cases": '[{name = "x", kernel = "no-such-variant"}]'})
    with pytest.raises(HurdxenError, match=r"recipes/boot.toml: cases\[0\].kernel: no gnumach output named "
                       r"'no-such-variant'") as e:  # fmt: skip
        make_plan(bad)
    assert "xen-pae" in (e.value.hint or "")


# ---------------------------------------------------------------------------------------------------------------
# The real thing: hypervisor build, dom0 initramfs, QEMU


XEN_TARBALL_URL = "http://deb.debian.org/debian/pool/main/x/xen/xen_4.17.5+72-g01140da4e8.orig.tar.xz"
XEN_TARBALL_SHA256 = "53922f4d0a02c577f2ea9d63f65989cd88715779eebeed879ca1d314103ee06e"
EXT2FS_CMDLINE = (
    "ext2fs --multiboot-command-line=${kernel-command-line} --host-priv-port=${host-port} "
    "--device-master-port=${device-port} --exec-server-task=${exec-task} -T typed ${root} "
    "$(task-create) $(task-resume)"
)
EXEC_CMDLINE = "exec /hurd/exec $(exec-task=task-create)"
PAE_EXPECT = ("GNU Mach", "Running on xen-3.0-x86_32p", "2 multiboot modules", "task loaded: exec /hurd/exec")
AMD64_REFUSAL = "xc_dom_chk_alloc_pages: segment padding too large"
NOPAE_REFUSAL = "xc_dom_compat_check: guest type xen-3.0-x86_32 not supported by xen kernel"


# GNU Mach's block front end, naming a VBD from its Xen device number (768: hda; 769: hda1) and giving its size.
DISK_LINE = "hd0: dom0's VBD 768 (/guests/guest-32pae-disk/disk,w) 1MB"
PART_LINE = "hd0s1: dom0's VBD 769 (/guests/guest-32pae-disk-partition/disk,w) 2MB"


def mbr_disk(size: int, first_sector: int) -> bytes:
    """A disk of `size` bytes whose MBR holds one Linux partition from `first_sector` to the end."""
    sectors = size // 512 - first_sector
    entry = bytes([0, 0, 0, 0, 0x83, 0, 0, 0]) + first_sector.to_bytes(4, "little") + sectors.to_bytes(4, "little")
    mbr = bytearray(512)
    mbr[446:462] = entry
    mbr[510:512] = b"\x55\xaa"
    return bytes(mbr).ljust(size, b"\0")


def without_pae(kernel: bytes) -> bytes:
    """The same kernel announcing a non-PAE guest (`PAE=no` in `__xen_guest`): what a non-PAE build looks like to
    the Xen toolstack, which must refuse it on this (PAE-only, like every 64-bit) hypervisor."""
    old = b"PAE=yes[extended-cr3],LOADER=generic,FEATURES=pae_pgdir_above_4gb"
    new = b"PAE=no,LOADER=generic"
    assert kernel.count(old) == 1, "no __xen_guest PAE entry to patch"
    return kernel.replace(old, new + b"\0" * (len(old) - len(new)))


# Every slow case runs in one boot check: one Xen + dom0 boot for all the guests (the quick dom0 case beside it),
# from a directory whose path QEMU cannot take as it is (a space, a comma, non-ASCII): hypervisor, dom0 files,
# kernels, ramdisks, pv-grub2 images and logs all live there.
AWKWARD_DIR = "b with space, and comma, ü"
FAKE_KF = bootcases.KnownFailure("crash", "fake_fault", "the fake kernel faults on purpose")
# How Debian's 32-bit kernel (GNU Mach upstream, without recipes/patches/gnumach/0013) ends once a task with page
# tables is destroyed: the slab allocator's write into a freed page table, still read-only, reaches vm_fault.
TERMINATE_PANIC = "falls in physical memory area"


@pytest.fixture(scope="module")
def boot_env(elves: ElfFactory, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Hypervisor and dom0 (cached by identity under the cache dir, then copied to the awkward path), Debian's
    kernels, a stand-in ramdisk, the fake PV kernel and two pv-grub2 images."""
    from hurdxen.core import fsutil
    from hurdxen.pipeline import recipes
    from hurdxen.pipeline.containers import ensure_base, ensure_image
    from hurdxen.pipeline.context import make_context
    from hurdxen.sources.fetch import TarballPin, fetch_tarball
    from hurdxen.stages.pvgrub2 import image as pvgrub_image
    from hurdxen.stages.pvgrub2 import stage as pvgrub

    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    ctx = make_context(recipes.load(REPO))
    logs = ctx.artifacts / "logs" / "boot"
    ensure_base(ctx.base, ctx.cache.root, ctx.log("base"))
    builder = ensure_image(ctx.image("builder"), ctx.log("image:builder"))
    dom0_image = ensure_image(ctx.image("boot-dom0"), ctx.log("image:boot-dom0"))
    executor = ctx.executor()
    tarball = fetch_tarball(TarballPin("xen orig tarball", XEN_TARBALL_URL, XEN_TARBALL_SHA256, "boot.xen"), ctx.cache)
    hv_spec = bootimages.HypervisorSpec(XEN_TARBALL_URL, XEN_TARBALL_SHA256, source_date_epoch=ctx.source_date_epoch)
    hv_dir = ctx.cache.root / "boot" / f"xen-{hv_spec.identity(builder.tag)}"
    hv = bootimages.build_hypervisor(hv_spec, tarball, hv_dir, executor, builder.tag, logs)
    d_spec = bootimages.Dom0Spec(source_date_epoch=ctx.source_date_epoch)
    d_dir = ctx.cache.root / "boot" / f"dom0-{d_spec.identity(dom0_image.tag)}"
    dom0 = bootimages.build_dom0(d_spec, d_dir, executor, dom0_image.tag, logs)
    # The dom0 initramfs is deterministic: a second build from the same image gives the same bytes.
    again = bootimages.build_dom0(d_spec, tmp_path_factory.mktemp("dom0") / "d", executor, dom0_image.tag, logs)
    assert again.initrd_sha256 == dom0.initrd_sha256 and not again.reused

    work = tmp_path_factory.mktemp("boot") / AWKWARD_DIR
    work.mkdir()
    for src in (hv.xen, dom0.kernel, dom0.initrd):
        shutil.copy(src, work / src.name)
    hv = bootimages.HypervisorResult(work / hv.xen.name, hv.config, hv.identity, hv.sha256, 0.0, True)
    dom0 = bootimages.Dom0Result(work / dom0.kernel.name, work / dom0.initrd.name, dom0.identity,
                                 dom0.initrd_sha256, 0.0, True)  # fmt: skip
    pae = work / "gnumach-pae"
    pae.write_bytes(gzip.decompress(fetch_kernel("i386-486-sid").read_bytes()))
    nopae = work / "gnumach-nopae"
    nopae.write_bytes(without_pae(pae.read_bytes()))
    ramdisk = work / "hurd-modules"
    ramdisk.write_bytes(
        build_ramdisk([Module("ext2fs.static", EXT2FS_CMDLINE, elves.static(32)),
                       Module("ld.so.1", EXEC_CMDLINE, elves.ldso(32))])
    )  # fmt: skip
    terminate = work / "hurd-modules-terminate"
    terminate.write_bytes(
        build_ramdisk([Module("ext2fs.static", EXT2FS_CMDLINE, elves.terminate32()),
                       Module("ld.so.1", EXEC_CMDLINE, elves.ldso(32))])
    )  # fmt: skip
    amd64 = work / "gnumach-amd64"
    amd64.write_bytes(gzip.decompress(fetch_kernel("amd64").read_bytes()))
    fake = work / "fake-pv-kernel"
    shutil.copy(elves.pv_kernel(), fake)
    # Disks for the block-device path (dom0's loop device and hotplug script, blkback, GNU Mach's block front end):
    # a whole 1 MiB disk, and a 3 MiB one with an MBR whose partition 1 (2 MiB from sector 2048) the guest gets.
    (work / "disk.img").write_bytes(b"hurdxen disk\n".ljust(1 << 20, b"\0"))
    (work / "disk-partitioned.img").write_bytes(mbr_disk(3 << 20, first_sector=2048))
    (work / "ext2fs.static").write_bytes(elves.static(32))
    (work / "ld.so.1").write_bytes(elves.ldso(32))

    recipe = pvgrub.load_recipe(REPO / "recipes" / "pvgrub2.toml")
    grub_tree = pvgrub.fetch_grub_tree(recipe, ctx.cache)
    images = {}
    for name in ("i386-xen-standalone", "x86_64-xen-disk"):
        spec = recipe.get(name)
        modules = {"/hurd/ext2fs.static": work / "ext2fs.static", "/lib/ld.so.1": work / "ld.so.1"}
        standalone = spec.flavour == "standalone"
        inputs = pvgrub_image.Inputs(grub_tree, fetch_kernel("i386-486-sid") if standalone else None, modules)
        log = work / "logs" / f"pvgrub-{name}.log"
        with fsutil.scratch_dir(tmp_path_factory.mktemp("pvgrub"), name) as scratch:
            made = pvgrub_image.make_image(
                spec, inputs, ctx.source_date_epoch, builder.tag, scratch, lambda s, log=log: ctx.executor().run(s, log)
            )
        images[name] = work / f"pv-grub {name}"
        images[name].write_bytes(made.image)
    return {
        "disk": work / "disk.img", "disk-partitioned": work / "disk-partitioned.img",
        "hv": hv, "dom0": dom0, "pae": pae, "nopae": nopae, "amd64": amd64, "ramdisk": ramdisk, "fake": fake,
        "pvgrub": images, "logs": work / "logs", "work": work, "terminate": terminate,
    }  # fmt: skip


@pytest.fixture(scope="module")
def boot_report(boot_env: dict[str, Any]) -> bootcases.BootReport:
    """One boot check over every slow case: one session (one Xen + dom0 boot) for the guests."""
    env = boot_env
    pae, nopae, amd64, ramdisk, fake = (env[k] for k in ("pae", "nopae", "amd64", "ramdisk", "fake"))
    images = env["pvgrub"]
    fake_expect = ("Running on xen-3.0-x86_64", "task loaded: exec /hurd/exec")
    fake_case = functools.partial(bootcases.BootCase, kind="guest", kernel=fake, memory_mb=32, timeout=60,
                                  symbols=fake, expect=fake_expect)  # fmt: skip
    cases = [
        bootcases.BootCase("quick-dom0-32pae", "dom0", pae, cmdline="console=hyp0",
                           expect=("GNU Mach", "Running on xen-3.0-x86_32p"), timeout=60),
        bootcases.BootCase("guest-32pae", "guest", pae, ramdisk, expect=PAE_EXPECT, timeout=120),
        bootcases.BootCase("guest-32nopae", "guest", nopae, ramdisk, expect_refusal=NOPAE_REFUSAL, timeout=120),
        # Issue 24 without the toolchain: Debian's (upstream) kernel panics when the stand-in terminates its child.
        bootcases.BootCase("guest-32pae-standin-task-terminate", "guest", pae, env["terminate"], timeout=120,
                           expect=(*PAE_EXPECT[3:], TERMINATE32_WIRED), alive_after=3,
                           known_failure=bootcases.KnownFailure("panic", TERMINATE_PANIC, "issue 24: pmap_destroy")),
        # Debian's x86_64 kernel: its __xen_guest says VIRT_BASE=0x40000000 while it is linked at
        # 0xffffffff80000000 (the note-owner bug makes Xen read that string), so libxc cannot lay it out.
        bootcases.BootCase("guest-64-debian", "guest", amd64, ramdisk, timeout=120, expect=PAE_EXPECT[2:],
                           known_failure=bootcases.KnownFailure("refusal", AMD64_REFUSAL, "VIRT_BASE != link base")),
        bootcases.BootCase("guest-32pae-disk", "guest", pae, ramdisk, timeout=120, disk=env["disk"],
                           expect=(*PAE_EXPECT[:2], DISK_LINE, *PAE_EXPECT[2:])),
        bootcases.BootCase("guest-32pae-disk-partition", "guest", pae, ramdisk, timeout=120,
                           disk=env["disk-partitioned"], disk_vdev="hda1",
                           expect=(*PAE_EXPECT[:2], PART_LINE, *PAE_EXPECT[2:])),
        fake_case(name="fake-crash", cmdline="fault", known_failure=FAKE_KF),
        fake_case(name="fake-xpass", cmdline="boot", known_failure=FAKE_KF),
        fake_case(name="fake-other-crash", cmdline="fault",
                  known_failure=bootcases.KnownFailure("crash", "fake_step", "recorded elsewhere")),
        fake_case(name="fake-panic", cmdline="panic"),
        fake_case(name="fake-alive", cmdline="alive", alive_after=3),
        fake_case(name="fake-dies", cmdline="dies", alive_after=3),
        fake_case(name="fake-poweroff", cmdline="boot", alive_after=3),
        bootcases.BootCase("pvgrub-i386-standalone", "pvgrub", None, pvgrub=images["i386-xen-standalone"],
                           expect=PAE_EXPECT[1:], timeout=120),
        bootcases.BootCase("pvgrub-x86_64-disk", "pvgrub", None, pvgrub=images["x86_64-xen-disk"],
                           expect=("Welcome to GRUB!",), timeout=120),
    ]  # fmt: skip
    report = bootrun.run_boot_checks(cases, env["hv"], env["dom0"], env["logs"])
    bootrun.print_report(report, ConsoleMonitor())
    print(json.dumps(report.summary(), indent=1))
    return report


def _got(report: bootcases.BootReport) -> dict[str, bootcases.BootResult]:
    return {r.case.name: r for r in report.results}


@pytest.mark.docker
@pytest.mark.slow
def test_boot_checks(boot_report: bootcases.BootReport) -> None:
    got = _got(boot_report)
    assert got["quick-dom0-32pae"].verdict == "pass", got["quick-dom0-32pae"].reason
    assert got["guest-32pae"].verdict == "pass", got["guest-32pae"].reason
    assert got["guest-32pae"].matched == PAE_EXPECT
    assert got["guest-32nopae"].verdict == "expected-refusal", got["guest-32nopae"].reason
    # The stand-in's RPCs are answered right up to vm_wire; the upstream kernel panics in pmap_enter when it
    # terminates the child (pmap_destroy frees the pinned page table), so task_terminate(child) never returns.
    term = got["guest-32pae-standin-task-terminate"]
    assert term.verdict == "known-failure" and term.ending is not None and term.ending.panic is not None, term.reason
    assert term.ending.panic.function == "pmap_enter", term.summary()
    assert TERMINATE32_CHILD not in term.log.read_text(), term.summary()
    assert got["guest-64-debian"].verdict == "known-failure", got["guest-64-debian"].reason
    ending = got["guest-64-debian"].ending
    assert ending is not None and ending.kind == "refusal" and AMD64_REFUSAL in ending.signature
    # The disk reaches the guest as a Xen block device: the whole image as hd0, partition 1 of the other as hd0s1.
    for name in ("guest-32pae-disk", "guest-32pae-disk-partition"):
        assert got[name].verdict == "pass", got[name].reason
    # The 32-bit pv-grub2 image builds GNU Mach's module layout; the 64-bit disk image (no kernel) reaches GRUB.
    assert got["pvgrub-i386-standalone"].verdict == "pass", got["pvgrub-i386-standalone"].reason
    assert got["pvgrub-x86_64-disk"].verdict == "pass", got["pvgrub-x86_64-disk"].reason
    # One dom0 boot for every guest case, each with its own log (its slice of the session's serial log).
    sessions = boot_report.summary()["sessions"]
    guests = [s for s in sessions if s["label"] == "session"]
    assert len(guests) == 1 and "quick-dom0-32pae" not in guests[0]["cases"], sessions
    for r in boot_report.results:
        assert r.log.is_file() and r.log.stat().st_size > 0
        assert AWKWARD_DIR in str(r.log)
    assert "(d1) " in got["guest-32pae"].log.read_text() and "(d1) " not in got["guest-32nopae"].log.read_text()


@pytest.mark.docker
@pytest.mark.slow
def test_crash_is_symbolized(boot_report: bootcases.BootReport) -> None:
    """A guest that faults on purpose: the report names the fault, the registers and the symbolized site and
    callers, read from the unstripped kernel; the case ends as its record says."""
    got = _got(boot_report)
    r = got["fake-crash"]
    assert r.verdict == "known-failure", r.reason
    assert r.ending is not None and r.ending.crash is not None
    crash = r.ending.crash
    assert (crash.vector, crash.error_code, crash.cr2) == (14, 2, 0xDEAD0000)  # a write to an unmapped page
    assert crash.site is not None and crash.site.function == "fake_fault"
    assert crash.site.location is not None and re.fullmatch(r".*pvkernel-64-x\.c:\d+", crash.site.location)
    callers = [c.function for c in crash.callers]
    assert callers.index("fake_step") < callers.index("fake_main"), callers
    assert r.ending.headline.startswith("page fault at dead0000 (error code 0002) in fake_fault (")
    assert "← fake_step" in r.ending.headline and "← fake_main" in r.ending.headline
    summary = r.summary()
    assert summary["ending"]["crash"]["rip"] == f"{crash.rip:x}" and summary["ending"]["crash"]["xen_lines"]
    assert "Unhandled: vec 14" in summary["ending"]["crash"]["xen_lines"][0]
    # The same crash against another record: a failure, saying so.
    other = got["fake-other-crash"]
    assert other.verdict == "fail" and "fails differently from its record" in other.reason, other.reason
    # A panic line: file, line, function and message.
    p = got["fake-panic"]
    assert p.verdict == "fail" and p.ending is not None and p.ending.panic is not None, p.reason
    assert p.ending.headline == "panic in fake_step (kern/fake.c:42): fake panic for the boot check"


@pytest.mark.docker
@pytest.mark.slow
def test_alive_after_in_a_real_boot(boot_report: bootcases.BootReport) -> None:
    """`alive_after`: the fake kernel that spins after its last line passes once it has run that long; the one that
    faults there, or powers off, fails with its ending."""
    got = _got(boot_report)
    alive = got["fake-alive"]
    assert alive.verdict == "pass" and alive.ending is None, alive.reason
    assert alive.seconds >= 3 + dict(alive.timeline)["task loaded: exec /hurd/exec"], alive.summary()
    dies = got["fake-dies"]
    assert dies.verdict == "fail" and dies.ending is not None and dies.ending.crash is not None, dies.reason
    assert dies.ending.crash.site is not None and dies.ending.crash.site.function == "fake_fault"
    assert dies.reason.endswith("after every expected line (alive_after 3 s)"), dies.reason
    off = got["fake-poweroff"]
    assert off.verdict == "fail" and off.ending is not None and off.ending.kind == "shutdown", off.reason


@pytest.mark.docker
@pytest.mark.slow
def test_xpass_is_reported_and_fails(boot_report: bootcases.BootReport) -> None:
    """A case recorded as a known failure whose guest passes: `xpass`, loudly, and the check is not ok."""
    r = _got(boot_report)["fake-xpass"]
    assert r.verdict == "xpass" and "passing further than recorded" in r.reason, r.reason
    assert not r.ok and not boot_report.ok
    assert r.summary()["verdict"] == "xpass" and r.summary()["known_failure"]["match"] == "fake_fault"
