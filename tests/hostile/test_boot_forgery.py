"""A guest that prints every line of Xen's and the toolstack's it can changes neither its own verdict nor another
guest's: the serial log is split at `\\n` only and each line is judged by its source (hurdxen/bootlog.py).

The fast tests feed the judge the bytes the serial line would carry (the dom0 relays a guest's PV console as
`[NAME] x<hex>`, Xen prefixes a guest's console_io lines with `(dN) ` and strips their non-printables); the slow one
boots the fake PV kernel in its `forge` mode under the real Xen and dom0."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hurdxen.boot import cases as bootcases
from hurdxen.boot import log as bootlog
from hurdxen.boot import run as bootrun
from hurdxen.core.monitor import NullMonitor
from tests.elfstandins import ElfFactory, elves

__all__ = ["elves"]

EXPECT = ("Running on xen-3.0-x86_64", "task loaded: exec /hurd/exec")
# Every toolstack, init and Xen line a guest could try to print, for a case named c (domid 2) and a victim v.
FORGED = (
    "(XEN) d2v0 Unhandled: vec 14, #PF[0002]",
    "(XEN) Domain 2 (vcpu#0) crashed on cpu#0:",
    "(XEN) RIP:    e033:[<ffffffff80000000>]",
    "(XEN) Hardware Dom0 crashed",
    "(XEN) Panic on CPU 0:",
    "[xl:c] Domain 2 has shut down, reason code 3 0x3",
    "[xl:v] Waiting for domain v (domid 2) to die [pid 1]",
    "[xl:c] Waiting for domain c (domid 7) to die [pid 1]",
    "hurdxen-dom0: xl create c failed",
    "hurdxen-dom0: created v domid 2",
    "Kernel panic - not syncing: forged",
    "[v] task loaded: exec /hurd/exec",
)
# What could end a line early if the log were split with str.splitlines (a guest can print each of them).
BREAKS = ("\r", "\f", "\v", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\x1b[2K\r", "")


def xen_line(domid: int, text: str) -> bytes:
    """What Xen prints for a guest's console_io line: its prefix, the printable bytes only."""
    return f"(d{domid}) ".encode() + bytes(c for c in text.encode() if 0x20 <= c < 0x7F or c == 9) + b"\n"


def relay(name: str, data: bytes) -> bytes:
    """What the dom0 init prints for a line of the guest's PV console (data/boot/init.sh)."""
    return f"[{name}] x{data[:1024].hex()}\r\n".encode()


def case(name: str = "c", **kw: Any) -> bootcases.BootCase:
    return bootcases.BootCase(name, kw.pop("kind", "guest"), Path("k"), expect=kw.pop("expect", EXPECT), **kw)


def judged(c: bootcases.BootCase, raw: bytes, over: bool = False) -> tuple[str, str] | None:
    v = bootcases.judge(c, bootlog.canonical(raw), over)
    return None if v is None else (v[0], v[1])


UP = b"[xl:c] Waiting for domain c (domid 2) to die [pid 9]\r\nhurdxen-dom0: created c domid 2\r\n"
GOOD = xen_line(2, "fake kernel: Running on xen-3.0-x86_64.") + xen_line(2, "task loaded: exec /hurd/exec")


def forgeries(domid: int, name: str) -> bytes:
    out = b""
    for brk in BREAKS:
        for f in FORGED:
            out += xen_line(domid, brk + f) + relay(name, (brk + f).encode())
    return out


def test_forged_lines_change_no_verdict_of_the_guest_itself() -> None:
    """Printed through console_io and the PV console, before and after its own lines: still a pass; with
    alive_after, still open (nothing ended it) and then a pass."""
    assert judged(case(), UP + GOOD) == ("pass", "")
    assert judged(case(), UP + forgeries(2, "c") + GOOD + forgeries(2, "c")) == ("pass", "")
    alive = case(alive_after=3.0)
    text = bootlog.canonical(UP + forgeries(2, "c") + GOOD + forgeries(2, "c"))
    assert bootcases.judge(alive, text, False, 1.0) is None
    assert bootcases.judge(alive, text, False, 3.0) == ("pass", "", None)
    ending, _ = bootcases.find_ending(alive, text, True)
    assert ending is not None and ending.kind == "timeout", ending  # no crash, panic, refusal or shutdown


def test_forged_lines_do_not_make_another_guest_pass() -> None:
    """The previous guest (domid 1, destroyed in the background) prints the next case's toolstack line and its
    expected lines; the next case, whose own guest (domid 2) panics, fails with that panic."""
    bait = ("[xl:c] Waiting for domain c (domid 1) to die [pid 1]", "hurdxen-dom0: created c domid 1", *EXPECT)
    late = b"".join(xen_line(1, f) + relay("prev", f.encode()) for f in bait)
    late += b"".join(xen_line(1, "\r" + f) for f in ("[xl:c] Waiting for domain c (domid 1)", *EXPECT))
    panic = xen_line(2, "fake kernel: Running on xen-3.0-x86_64.") + xen_line(
        2, "panic ../kern/fake.c:42: fake_step: fake panic"
    )
    shut = b"[xl:c] Domain 2 has shut down, reason code 3 0x3\r\n"
    v = judged(case(), late + UP + late + panic + late + shut)
    assert v is not None and v[0] == "fail" and v[1].startswith("panic in fake_step (kern/fake.c:42)"), v
    assert bootcases.guest_domid(case(), bootlog.canonical(late + UP)) == 2
    # Before its domid is known, no (dN) line is its own, and a relayed line is nobody's toolstack line.
    assert bootcases.guest_domid(case(), bootlog.canonical(late)) is None
    assert judged(case(), late + relay("c", b"[xl:c] Waiting for domain c (domid 1)") + late) is None


def test_a_slice_starts_at_a_line_start(tmp_path: Path) -> None:
    """A case's slice of the session log begins where the line being printed began: the second half of a
    guest's half-printed line cannot start it."""
    con = bootrun.Console(["printf", "(d1) whole line\\n(d1) [xl:c] Waiting for"], tmp_path / "l", NullMonitor(), "t")
    try:
        end = time.monotonic() + 10
        while not con.exited and time.monotonic() < end:
            time.sleep(0.05)
        time.sleep(0.2)
        assert con.mark() == len(b"(d1) whole line\n")
        assert con.since(con.mark()).startswith(b"(d1) ")
    finally:
        con.close(grace=1)


def test_panic_anywhere_in_a_guest_line_is_a_panic() -> None:
    """Issue 24: `start ext2fs: panic …` — GNU Mach prints its panic where the boot task's line was open."""
    line = "start ext2fs: panic /usr/src/gnumach/i386/intel/pmap.c:2205: pmap_enter: pmap_enter(c7c88000, 7c98000) "
    line += "falls in physical memory area!"
    raw = UP + xen_line(2, "fake kernel: Running on xen-3.0-x86_64.") + xen_line(2, line)
    raw += b"[xl:c] Domain 2 has shut down, reason code 24 0x18\r\n"
    v = bootcases.judge(case(), bootlog.canonical(raw), False)
    assert v is not None and v[0] == "fail" and v[2] is not None and v[2].panic is not None, v
    p = v[2].panic
    assert (p.file, p.line, p.function) == ("i386/intel/pmap.c", 2205, "pmap_enter"), p
    assert v[1].startswith("panic in pmap_enter (i386/intel/pmap.c:2205): pmap_enter(c7c88000, 7c98000) falls"), v
    assert v[2].summary()["panic"]["line"] == 2205
    # Only the guest's own lines: the toolstack's `xc: error: panic: file:line: …` is a refusal, not a panic.
    xl = b"[xl:c] xc: error: panic: xg_dom_boot.c:86: xc_dom_compat_check: guest type not supported\r\n"
    ending, _ = bootcases.find_ending(case(), bootlog.canonical(xl + b"hurdxen-dom0: xl create c failed\r\n"), False)
    assert ending is not None and ending.kind == "refusal" and ending.panic is None


def test_a_dom0_banner_pass_shows_the_panic_after_it() -> None:
    """Issue 20: the quick case passes on its banner, but its detail names the panic that followed."""
    q = case("q", kind="dom0", expect=("GNU Mach", "Running on xen-3.0-x86_32p"))
    raw = b"(XEN) *** Serial input to DOM0\nGNU Mach 1.8\nRunning on xen-3.0-x86_32p.\nbiosmem: physical memory map:\n"
    raw += b"panic ../i386/intel/pmap.c:1140: pmap_set_page_readwrite: couldn't set hiMMU readwrite for addr c0000000\n"
    v = bootcases.judge(q, bootlog.canonical(raw), False)
    assert v is not None and v[0] == "pass" and v[2] is not None and v[2].panic is not None, v
    assert v[1] == "then panic in pmap_set_page_readwrite (i386/intel/pmap.c:1140): couldn't set hiMMU readwrite for " \
        "addr c0000000", v  # fmt: skip
    result = bootcases.BootResult(q, v[0], 1.0, Path("l"), q.expect, v[1], (), v[2])
    assert result.summary()["ending"]["panic"]["function"] == "pmap_set_page_readwrite"


@given(st.lists(st.tuples(st.sampled_from(FORGED), st.sampled_from(BREAKS), st.sampled_from(["domu", "relay"]),
                          st.integers(1, 3)), max_size=40), st.integers(0, 2))  # fmt: skip
@settings(max_examples=200, deadline=None)
def test_no_forgery_changes_a_verdict(forged: list[tuple[str, str, str, int]], where: int) -> None:
    """Any mix of forged lines from any guest (domids 1–3, console_io or the PV console), anywhere: the verdicts
    of a passing case and of a panicking one stay what their own lines and the toolstack say."""
    junk = b"".join(
        xen_line(d, brk + f) if how == "domu" else relay(("c", "prev", "v")[d - 1], (brk + f).encode())
        for f, brk, how, d in forged
    )
    parts = [UP, GOOD]
    parts.insert(where, junk)
    assert judged(case(), b"".join(parts)) == ("pass", "")
    bad = [UP, xen_line(2, "panic ../kern/x.c:1: f: boom"), b"[xl:c] Domain 2 has shut down, reason code 3 0x3\r\n"]
    bad.insert(where, junk)
    v = judged(case(), b"".join(bad))
    assert v is not None and v[0] == "fail" and v[1].startswith("panic in f (kern/x.c:1): boom"), v


def test_canonical_text_has_no_control_characters() -> None:
    raw = relay("c", bytes(range(256))) + b"\x1b]0;title\x07(XEN) x\rz\x9b2J\n"
    text = bootlog.canonical(raw)
    assert not bootlog.CONTROL.search(text.replace("\n", "")), text
    assert text.split("\n")[0].startswith("[c] \\x00\\x01") and "(XEN) x\\x0dz" in text
    assert [ln.source for ln in bootlog.parse(text)] == ["console", "other"]


# ------------------------------------------------------------------ the real thing


@pytest.fixture(scope="module")
def xen_and_dom0(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path]:
    """The hypervisor and the dom0 of the default recipes, built (or reused) by identity under the cache."""
    from hurdxen.boot import images as bootimages
    from hurdxen.boot import stage as boot
    from hurdxen.pipeline import recipes
    from hurdxen.pipeline.containers import ensure_base, ensure_image
    from hurdxen.pipeline.context import make_context
    from hurdxen.sources.fetch import TarballPin, fetch_tarball

    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    root = Path(__file__).resolve().parents[2]
    r = recipes.load(root)
    ctx = make_context(r)
    rec = boot.recipe_from(r["boot"], int(r["base"]["base"]["source_date_epoch"]))
    logs = tmp_path_factory.mktemp("forgery-logs")
    ensure_base(ctx.base, ctx.cache.root, ctx.log("base"))
    builder = ensure_image(ctx.image(rec.image), ctx.log(f"image:{rec.image}"))
    dom0_image = ensure_image(ctx.image(rec.dom0_image), ctx.log(f"image:{rec.dom0_image}"))
    hv_spec = rec.hypervisor
    tarball = fetch_tarball(TarballPin("xen orig tarball", hv_spec.url, hv_spec.sha256, "boot.xen"), ctx.cache)
    hv = bootimages.build_hypervisor(hv_spec, tarball, boot.hypervisor_dir(ctx, hv_spec, builder.tag),
                                     ctx.executor(), builder.tag, logs)  # fmt: skip
    d_spec = rec.dom0
    dom0 = bootimages.build_dom0(d_spec, boot.dom0_dir(ctx, d_spec, dom0_image.tag), ctx.executor(), dom0_image.tag,
                                 logs)  # fmt: skip
    return hv, dom0, logs


@pytest.mark.docker
@pytest.mark.slow
def test_a_forging_guest_under_real_xen(xen_and_dom0: tuple[Any, Any, Path], elves: ElfFactory) -> None:
    """The fake PV kernel in `forge` mode (the first guest: domid 1) prints every Xen and toolstack line it can,
    through console_io and its PV console, then GNU Mach's lines, then keeps printing the next case's toolstack line
    (`… fake-victim (domid 1)`) and boot lines until it is destroyed. It passes (it kept running); the victim,
    which panics, fails with its panic — on main before this, the forger failed and the victim passed."""
    hv, dom0, logs = xen_and_dom0
    kernel = elves.pv_kernel()
    mk = lambda name, cmdline, **kw: bootcases.BootCase(  # noqa: E731
        name, "guest", kernel, expect=EXPECT, cmdline=cmdline, memory_mb=32, timeout=60, symbols=kernel, **kw
    )
    cases = [mk("fake-forger", "forge", alive_after=2), mk("fake-victim", "panic")]
    report = bootrun.run_boot_checks(cases, hv, dom0, logs, jobs=1)
    got = {r.case.name: r for r in report.results}
    forger, victim = got["fake-forger"], got["fake-victim"]
    session = (logs / "session.log").read_bytes()
    assert b"(d1) (XEN) Domain 1 (vcpu#0) crashed" in session  # Xen dropped the \r: a guest line, not Xen's
    assert b"[fake-forger] x0d28" in session  # the relayed console: "\r(" hex-encoded
    assert forger.verdict == "pass" and forger.ending is None, forger.summary()
    assert victim.verdict == "fail" and victim.ending is not None and victim.ending.panic is not None, victim.summary()
    assert victim.ending.panic.function == "fake_step" and victim.summary()["ending"]["panic"]["line"] == 42
    forger_log = forger.log.read_text()
    assert "[fake-forger] \\x0d[xl:fake-forger] Domain 1 has shut down" in forger_log, forger_log[-3000:]
