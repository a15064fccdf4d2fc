"""Boot check: a real Xen (built from the pinned tarball) in QEMU boots Debian's prebuilt 32-bit gnumach-xen kernel
with a ramdisk of stand-in modules. Slow (QEMU/TCG) and needs the Docker engine; everything built is cached by
identity under $HURDXEN_CACHE (default: <repo>/cache), so reruns only boot."""

from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from boot_inputs import (  # noqa: E402
    EXEC_CMDLINE,
    EXT2FS_CMDLINE,
    GNUMACH_486,
    XEN_TARBALL_SHA256,
    XEN_TARBALL_URL,
    download,
    hurd_modules,
    kernel_from_deb,
    without_pae,
)

from hurdxen import boot  # noqa: E402
from hurdxen.errors import HurdxenError  # noqa: E402

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
        boot.CpioEntry("usr/lib/b", stat.S_IFREG | 0o755, b"bb"),
        boot.CpioEntry("a", stat.S_IFREG | 0o644, b"a"),
        boot.CpioEntry("lib64/ld", stat.S_IFLNK | 0o777, b"/lib/x"),
    ]
    one = boot.write_cpio(entries, 1234)
    assert one == boot.write_cpio(list(reversed(entries)), 1234)
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
    assert boot.gzip_n(one) == boot.gzip_n(one)


def _case(**kw: object) -> boot.BootCase:
    d: dict[str, object] = {"name": "c", "kind": "guest", "kernel": Path("k"), "expect": ("GNU Mach", "task loaded")}
    d.update(kw)
    return boot.BootCase(**d)  # type: ignore[arg-type]


def test_verdicts() -> None:
    c = _case()
    assert boot.judge(c, "(d1) GNU Mach 1.8\n", False) is None
    assert boot.judge(c, "(d1) GNU Mach 1.8\n(d1) task loaded: x\n", False) == ("pass", "")
    assert boot.judge(c, "GNU Mach\n(XEN) Panic on CPU 0\ntask loaded", False)[0] == "fail"  # type: ignore[index]
    assert boot.judge(c, "GNU Mach\ntask loaded\n(XEN) Panic on CPU 0", False) == ("pass", "")
    assert boot.judge(c, "GNU Mach\n", True) == ("fail", "missing: task loaded")
    assert boot.judge(c, "hurdxen-dom0: xl create c failed\n", False)[0] == "fail"  # type: ignore[index]
    r = _case(expect=(), expect_refusal="not supported")
    assert boot.judge(r, "xl: not supported by xen kernel\nhurdxen-dom0: xl create c failed", False)[0] == (
        "expected-refusal"
    )
    assert boot.judge(r, "hurdxen-dom0: created c\n", False)[0] == "fail"  # type: ignore[index]
    k = _case(expect=("GNU Mach",), known_failure=boot.KnownFailure("pmap_bootstrap_xen", "x86_64 pmap"))
    assert boot.judge(k, "GNU Mach\n", False) is None
    assert boot.judge(k, "GNU Mach\n... pmap_bootstrap_xen ...\n", False) == ("known-failure", "x86_64 pmap")
    assert boot.judge(k, "GNU Mach\n", True)[0] == "pass"  # type: ignore[index]  # the test notices the change


def test_guest_config_and_bad_names(tmp_path: Path) -> None:
    c = _case(ramdisk=Path("r"))
    cfg = boot.guest_config(c)
    assert 'type = "pv"' in cfg and 'ramdisk = "/guests/c/ramdisk"' in cfg and 'on_crash = "preserve"' in cfg
    g = boot.guest_config(_case(kind="pvgrub", kernel=None, pvgrub=Path("p")))
    assert 'kernel = "/guests/c/pvgrub"' in g and "extra" not in g
    hv = boot.HypervisorResult(tmp_path / "xen", tmp_path / "c", "i", "s", 0.0, True)
    with pytest.raises(HurdxenError, match="plain file name"):
        boot.run_boot_checks([_case(name="a b")], hv, None, tmp_path)


def test_hurd_modules_layout() -> None:
    data = hurd_modules([("a x", b"\x7fELF1"), ("b", b"\x7fELF22")])
    import struct

    recs = [struct.unpack_from("<IIII", data, 16 * i) for i in range(3)]
    assert recs[2] == (0, 0, 0, 0)
    assert recs[0][0] % 4096 == 0 and recs[1][0] % 4096 == 0
    assert data[recs[0][0] : recs[0][1]] == b"\x7fELF1" and data[recs[1][0] : recs[1][1]] == b"\x7fELF22"
    assert data[recs[0][2] :].split(b"\0")[0] == b"a x"


# ---------------------------------------------------------------------------------------------------------------
# The real thing: hypervisor build, dom0 initramfs, QEMU


def _cache() -> Path:
    return Path(os.environ.get("HURDXEN_CACHE", REPO / "cache"))


@pytest.fixture(scope="session")
def boot_env() -> dict[str, object]:
    from hurdxen.containers import BaseSpec, ImageSpec, ensure_base, ensure_image
    from hurdxen.executors import make_executor
    from hurdxen.monitor import NullMonitor

    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    cache = _cache()
    logs = ARTIFACTS / "logs"
    base = BaseSpec("bookworm", "http://deb.debian.org/debian", "minbase", ("main",), (), 1700000000)
    ensure_base(base, cache, logs / "base.log")
    builder = ensure_image(ImageSpec("builder", REPO / "containers" / "builder", base), logs / "image-builder.log")
    dom0_image = ensure_image(
        ImageSpec("boot-dom0", REPO / "containers" / "boot-dom0", base), logs / "image-boot-dom0.log"
    )
    executor = make_executor("docker")
    tarball = download(XEN_TARBALL_URL, XEN_TARBALL_SHA256, cache / "tarballs" / Path(XEN_TARBALL_URL).name)
    hv_spec = boot.HypervisorSpec(XEN_TARBALL_URL, XEN_TARBALL_SHA256)
    hv = boot.build_hypervisor(
        hv_spec, tarball, cache / "boot" / f"xen-{hv_spec.identity(builder.tag)}", executor, builder.tag,
        logs / "boot", NullMonitor(),
    )  # fmt: skip
    d_spec = boot.Dom0Spec()
    dom0 = boot.build_dom0(d_spec, cache / "boot" / f"dom0-{d_spec.identity(dom0_image.tag)}", executor,
                           dom0_image.tag, logs / "boot")  # fmt: skip
    # Inputs: Debian's prebuilt 32-bit PAE kernel, its non-PAE twin, stand-in boot modules.
    inputs = cache / "boot-test"
    pae = kernel_from_deb(GNUMACH_486, cache)
    nopae = inputs / "gnumach-nopae"
    nopae.write_bytes(without_pae(pae.read_bytes()))
    standins = inputs / "standins"
    if not (standins / "ld.so.1").is_file():
        from hurdxen.executors import Mount, Step

        standins.mkdir(parents=True, exist_ok=True)
        script = (Path(__file__).parent / "boot_standins.sh").read_text()
        step = Step("boot:standins", script, builder.tag, (Mount(standins, "OUT", "/out", writable=True),))
        executor.run(step, logs / "boot" / "standins.log")
    ramdisk = inputs / "hurd-modules-standin"
    ramdisk.write_bytes(
        hurd_modules(
            [(EXT2FS_CMDLINE, (standins / "ext2fs.static").read_bytes()),
             (EXEC_CMDLINE, (standins / "ld.so.1").read_bytes())]
        )
    )  # fmt: skip
    return {"hv": hv, "dom0": dom0, "pae": pae, "nopae": nopae, "ramdisk": ramdisk, "logs": logs / "boot"}


PAE_EXPECT = ("GNU Mach", "Running on xen-3.0-x86_32p", "2 multiboot modules", "task loaded: exec /hurd/exec")
NOPAE_REFUSAL = "xc_dom_compat_check: guest type xen-3.0-x86_32 not supported by xen kernel"


@pytest.mark.docker
@pytest.mark.slow
def test_boot_checks(boot_env: dict[str, object]) -> None:
    env = boot_env
    cases = [
        boot.BootCase("quick-dom0-32pae", "dom0", env["pae"], cmdline="console=hyp0",  # type: ignore[arg-type]
                      expect=("GNU Mach", "Running on xen-3.0-x86_32p"), timeout=30),
        boot.BootCase("guest-32pae", "guest", env["pae"], env["ramdisk"],  # type: ignore[arg-type]
                      expect=PAE_EXPECT, timeout=90),
        boot.BootCase("guest-32nopae", "guest", env["nopae"], env["ramdisk"],  # type: ignore[arg-type]
                      expect_refusal=NOPAE_REFUSAL, timeout=90),
    ]  # fmt: skip
    report = boot.run_boot_checks(cases, env["hv"], env["dom0"], env["logs"])  # type: ignore[arg-type]
    boot.print_report(report)
    verdicts = {r.case.name: r for r in report.results}
    for r in report.results:
        print(r.summary())
    assert verdicts["quick-dom0-32pae"].verdict == "pass", verdicts["quick-dom0-32pae"].reason
    assert verdicts["guest-32pae"].verdict == "pass", verdicts["guest-32pae"].reason
    assert verdicts["guest-32nopae"].verdict == "expected-refusal", verdicts["guest-32nopae"].reason
    assert report.ok
    import json

    json.dumps(report.summary())
