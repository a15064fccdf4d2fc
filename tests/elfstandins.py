"""Small stand-in ELF files built with the host gcc: an ld.so with a Debian glibc banner, a static server, a PIE.

Real Hurd binaries cannot be downloaded here; these carry exactly what the ramdisk checks look at
(ELF class and machine, PT_INTERP, the `ld.so (Debian GLIBC …)` banner).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

LDSO_SRC = """
__attribute__((used)) const char banner[] = "ld.so (Debian GLIBC %s) stable release version %s.";
int _dl_start(void) { return 0; }
"""
STATIC_SRC = "void _start(void) { for (;;) ; }\n"
DYNAMIC_SRC = "int main(void) { return 0; }\n"


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
        flags = ["-shared", "-fPIC", "-nostdlib", f"-Wl,-soname,{soname}", "-Wl,--build-id=none"]
        return self._gcc(("ldso", bits, version), LDSO_SRC % (version, upstream), flags)

    def static(self, bits: int) -> bytes:
        flags = ["-static", "-nostdlib", "-ffreestanding", "-fno-pie", "-no-pie", "-Wl,--build-id=none"]
        return self._gcc(("static", bits, ""), STATIC_SRC, flags)

    def dynamic(self, bits: int) -> bytes:
        return self._gcc(("dynamic", bits, ""), DYNAMIC_SRC, ["-Wl,--build-id=none"])


@pytest.fixture(scope="session")
def elves(tmp_path_factory: pytest.TempPathFactory) -> ElfFactory:
    if shutil.which("gcc") is None:
        pytest.skip("no host gcc")
    return ElfFactory(tmp_path_factory.mktemp("elves"))
