"""The boot stage through doit, in a project copy: `doit boot:check` runs the three contract stages the plan makes
(hypervisor, dom0, check) — Xen and a Linux dom0 in QEMU boot Debian's prebuilt 32-bit PAE GNU Mach, as the dom0
itself and as a guest with a ramdisk of stand-in modules (pinned files: no debian-ports). Each stage publishes its
directory with one manifest; the check's report is its output `report`, read through that manifest. A second run
does nothing; a changed case boots again without rebuilding the hypervisor or the dom0.

Slow (QEMU/TCG, and a Xen build the first time: it is kept by identity under the shared cache, as in
tests/test_boot.py, which shares it). A bad case name is one error line at plan time (fast)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from debian_kernels import KERNELS, fetch_kernel
from project import Project, require_docker
from standin_overlay import write_overlay

from hurdxen.boot import cases as bootcases
from hurdxen.pipeline import manifest

PAE_EXPECT = '["GNU Mach", "Running on xen-3.0-x86_32p", "2 multiboot modules", "task loaded: exec /hurd/exec"]'
# sid's kernel: the first prebuilt 32-bit one that boots as a Xen 4.17 PV guest (tests/debian_kernels.py, whose
# fetch puts it in the shared cache by its sha256; sid's index moves on, and expires).
SID = KERNELS["i386-486-sid"]
KERNEL = f"""
[gnumach.prebuilt.debian-sid-486]
path = "{SID.kernel}"
bits = 32
pae = true
package = {{ package = "gnumach-image-1.8-xen-486", version = "2:1.8+git20261028-1", arch = "i386", suite = "sid", \
archive = "http://deb.debian.org/debian", sha256 = "{SID.sha256}" }}
"""


def boot_cases(guest_expect: str = PAE_EXPECT) -> str:
    quick = (
        '{ name = "quick-sid", kind = "dom0", kernel = "debian-sid-486", cmdline = "console=hyp0", timeout = 90, '
        'expect = ["GNU Mach", "Running on xen-3.0-x86_32p"] }'
    )
    guest = (
        f'{{ name = "guest-sid", kernel = "debian-sid-486", ramdisk = "hurd-i386", timeout = 120, '
        f"expect = {guest_expect} }}"
    )
    return f"\n[boot]\ncases = [\n  {quick},\n  {guest},\n]\n"


def test_a_case_naming_no_output_is_one_line_at_plan_time(tmp_path: Path) -> None:
    proj = Project.create(tmp_path / "proj", artifacts=tmp_path / "artifacts")
    proj.overlay('[boot]\ncases = [{ name = "x", kernel = "xen-pea" }]\n')
    r = proj.doit("list", timeout=120)
    assert r.returncode == 2
    errors = [ln for ln in r.stdout.splitlines() if ln.startswith("error: ")]
    assert errors == [
        "error: recipes/boot.toml: cases[0].kernel: no gnumach output named 'xen-pea' (hint: one of: debian-xen-486, "
        "xen-amd64, xen-nopae, xen-pae)"
    ], r.stdout
    assert "Traceback" not in r.stdout


@pytest.mark.docker
@pytest.mark.slow
def test_boot_stages_through_doit(tmp_path: Path) -> None:
    require_docker()
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    fetch_kernel(SID.key)  # into the shared cache, which the project copy's doit reads
    proj = Project.create(tmp_path / "proj", artifacts=tmp_path / "artifacts")
    standins = write_overlay(tmp_path / "standins")
    proj.overlay(standins + KERNEL + boot_cases())
    r = proj.doit("boot:check", timeout=3600)
    assert r.returncode == 0, r.stdout[-5000:]
    assert {"boot:hypervisor", "boot:dom0", "boot:check"} <= set(r.executed), r.executed
    art = proj.artifacts
    hv = manifest.read_task(art, "boot:hypervisor")
    assert hv.output("xen").read_bytes()[:4] == b"\x7fELF" and "CONFIG_PV32=y" in hv.output("config").read_text()
    dom0 = manifest.read_task(art, "boot:dom0")
    assert dom0.output("initrd").stat().st_size > 0 and dom0.output("kernel").stat().st_size > 0
    check = manifest.read_task(art, bootcases.CHECK_TASK)
    assert check.output(bootcases.REPORT) == art / "boot" / "check" / bootcases.REPORT_FILE
    assert check.inputs["hypervisor"]["identity"] == hv.identity and check.fact("ok") is True
    assert set(check.inputs["cases"]) == {"quick-sid", "guest-sid"}
    report = bootcases.read_report(art)
    assert report is not None and report["ok"] is True
    assert {c["case"]: c["verdict"] for c in report["cases"]} == {"quick-sid": "pass", "guest-sid": "pass"}

    again = proj.doit("boot:check", timeout=600)
    assert again.returncode == 0 and not [t for t in again.executed if t.startswith("boot:")], again.executed

    # Another expectation for the guest: only the check boots again (and, expecting a line that never comes, fails
    # with its verdicts published; the hypervisor and the dom0 stay as they were).
    proj.overlay(standins + KERNEL + boot_cases('["GNU Mach", "a line no kernel prints"]'))
    changed = proj.doit("boot:check", timeout=900)
    assert changed.returncode != 0
    assert "boot:check" in changed.executed and "boot:hypervisor" not in changed.executed, changed.executed
    assert "boot:dom0" not in changed.executed
    errors = [ln for ln in changed.stdout.splitlines() if ln.startswith("boot:check: error: ")]
    assert errors and "boot: 1 of 2 cases failed; guest-sid" in errors[0], changed.stdout[-3000:]
    report = bootcases.read_report(art)
    assert report is not None and report["ok"] is False
    assert manifest.read_task(art, "boot:hypervisor").identity == hv.identity
