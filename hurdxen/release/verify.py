"""Verifying a downloaded release bundle (a directory or its tarball) as its user would: SHA256SUMS, the signature
(with a keyring), manifest.json and the provenance against the files, and the kernels' Xen notes (hurdxen.xen.verify).
Everything in the bundle is outside input: bounded reads, only files and directories, one line per problem."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from hurdxen.core import fsutil, safeextract
from hurdxen.core.errors import HurdxenError, printable
from hurdxen.release.bundle import MANIFEST, PROVENANCE, SIGNATURE, SUMS


@dataclass(frozen=True)
class VerifyReport:
    target: str
    release: str | None
    problems: tuple[str, ...]  # each one line; any problem fails the check
    checked: tuple[str, ...]  # what was checked and found right
    warnings: tuple[str, ...]
    signed_by: str | None  # fingerprint of a good signature, None when unsigned or unchecked

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        # every line quotes the bundle (names, manifest values): controls escaped so none can forge a line
        head = f"{self.target}: {'OK' if self.ok else 'FAILED'}" + (f" ({self.release})" if self.release else "")
        lines = [printable(head, 1000)]
        lines += [f"  ok: {printable(c, 1000)}" for c in self.checked]
        lines += [f"  warning: {printable(w, 1000)}" for w in self.warnings]
        lines += [f"  problem: {printable(p, 1000)}" for p in self.problems]
        return "\n".join(lines) + "\n"

    def raise_for_problems(self) -> None:
        if self.problems:
            more = f" (+{len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            raise HurdxenError(
                f"verify {self.target}: {self.problems[0]}{more}",
                hint="do not use this release; download it again or ask its publisher",
            )


class _Checks:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.checked: list[str] = []
        self.warnings: list[str] = []


def _safe_extract(tarball: Path, dest: Path) -> Path:
    """Extract regular files and directories only, below one top-level directory; return that directory."""
    names = safeextract.extract(tarball, dest, tarball.name, BUNDLE_LIMITS)
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) != 1 or not (dest / next(iter(tops))).is_dir():
        raise HurdxenError(f"{tarball.name}: expected one top-level directory, found {len(tops)}")
    odd = [n for n, kind in _tree_entries(dest)[1]]
    if odd:
        raise HurdxenError(f"{tarball.name}: unsafe member {printable(odd[0])!r} (only files and directories)")
    return dest / tops.pop()


# A bundle holds a few kernels, ramdisks and images (tens of MiB): far below these.
BUNDLE_LIMITS = safeextract.Limits(max_bytes=2 << 30, max_members=10_000, max_ratio=100, ratio_floor=64 << 20)
MAX_META = 16 << 20  # bytes of SHA256SUMS, manifest.json or provenance read


def parse_sums(text: str) -> tuple[dict[str, str], list[str]]:
    """coreutils `sha256sum` lines → ({name: sha256}, [bad lines])."""
    out: dict[str, str] = {}
    bad: list[str] = []
    for i, line in enumerate(text.split("\n"), 1):
        if not line and i > 1:
            continue
        m = re.fullmatch(r"([0-9a-f]{64}) [ *]([^\x00-\x1f\x7f]+)", line)
        if m is None or m.group(2).startswith("/") or {".", ".."} & set(m.group(2).split("/")) or m.group(2) in out:
            bad.append(f"line {i}")
            continue
        out[m.group(2)] = m.group(1)
    return out, bad


def _tree_entries(d: Path) -> tuple[dict[str, Path], list[tuple[str, str]]]:
    """(regular files by relative name, [(name, kind)] of anything else but directories: links, FIFOs, devices)."""
    files: dict[str, Path] = {}
    odd: list[tuple[str, str]] = []
    for top, dirs, names in os.walk(d):  # never follows a directory symlink
        for n in sorted(dirs + names):
            p = Path(top, n)
            mode = p.lstat().st_mode
            rel = str(p.relative_to(d))
            if stat.S_ISREG(mode):
                files[rel] = p
            elif not stat.S_ISDIR(mode):
                odd.append((rel, "symlink" if stat.S_ISLNK(mode) else "special file"))
    return dict(sorted(files.items())), odd


def files_below(d: Path) -> dict[str, Path]:
    return _tree_entries(d)[0]


def _read_meta(c: _Checks, path: Path) -> bytes | None:
    """A bundle's metadata file, bounded in size; None (with a problem) when unreadable."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_META + 1)
    except OSError as e:
        c.problems.append(f"{path.name}: unreadable ({e.strerror})")
        return None
    if len(data) > MAX_META:
        c.problems.append(f"{path.name}: larger than {MAX_META >> 20} MiB")
        return None
    return data


def _load_json(c: _Checks, path: Path, schema_name: str) -> dict[str, Any] | None:
    """manifest.json / provenance: JSON, then the shape the verifier relies on (hurdxen/schemas/bundle/)."""
    import jsonschema

    data = _read_meta(c, path)
    if data is None:
        return None
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        c.problems.append(f"{path.name}: not JSON ({printable(e)})")
        return None
    schema = json.loads(
        resources.files("hurdxen").joinpath("schemas", "bundle", f"{schema_name}.schema.json").read_text()
    )
    err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(doc))
    if err is not None:
        at = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        c.problems.append(f"{path.name}: {printable(at)}: {printable(err.message, 120)}")
        return None
    assert isinstance(doc, dict)
    return doc


def _check_signature(c: _Checks, sums: Path, sig: Path, keyring: Path | None, fingerprint: str | None) -> str | None:
    import gnupg

    if keyring is None:
        c.warnings.append(f"{SIGNATURE} present but not checked: no keyring given (--keyring KEY.asc)")
        return None
    with tempfile.TemporaryDirectory(prefix="hurdxen-gpg-") as home:
        os.chmod(home, 0o700)
        if keyring.is_dir():
            shutil.copytree(
                keyring, home, dirs_exist_ok=True, ignore=shutil.ignore_patterns("S.*", "*.lock", "private-keys-v1.d")
            )
            gpg = gnupg.GPG(gnupghome=home)
        elif not keyring.is_file():
            c.problems.append(f"keyring {printable(keyring)} does not exist")
            return None
        else:
            gpg = gnupg.GPG(gnupghome=home)
            imported = gpg.import_keys(keyring.read_bytes()[: 16 << 20])
            if not imported.fingerprints:
                c.problems.append(f"keyring {keyring} holds no OpenPGP key")
                return None
        try:
            with open(sig, "rb") as f:
                v = gpg.verify_file(f, str(sums))
        except OSError as e:
            c.problems.append(f"{printable(sig)}: unreadable ({e.strerror})")
            return None
    if v.valid:
        fpr = str(v.fingerprint or "")
        if fingerprint and fpr.upper() != fingerprint.replace(" ", "").upper():
            c.problems.append(f"{SIGNATURE}: good signature, but by {fpr}, not the expected {fingerprint}")
            return None
        c.checked.append(f"{SIGNATURE}: good signature by {fpr}")
        return fpr
    status = str(v.status or "no signature found")
    if "no public key" in status:
        c.problems.append(f"{SIGNATURE}: made by key {v.key_id}, which is not in the keyring given")
    elif status == "signature bad":
        c.problems.append(f"{SIGNATURE}: BAD signature: {SUMS} was changed after signing (key {v.key_id})")
    else:
        c.problems.append(f"{SIGNATURE}: not a valid signature of {SUMS} ({status})")
    return None


KernelCheck = Callable[[Path, Mapping[str, Any]], tuple[list[str], list[str]]]


def xen_kernel_check(path: Path, expect: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(problems, warnings) from hurdxen.xen.verify for one kernel and what the manifest says it should be."""
    from hurdxen.xen import verify as xenverify

    bits = expect.get("bits")
    exp = xenverify.KernelExpectation(
        bits=bits if bits in (32, 64) else None,
        pae=expect.get("pae") if bits == 32 else None,
        strict=bool(expect.get("strict", False)),
    )
    try:
        report = xenverify.inspect_kernel(path, exp)
    except HurdxenError as e:
        return [e.message], []
    return [f"{f.message} — on Xen: {f.on_xen}" for f in report.errors], [f.message for f in report.warnings]


def verify(
    target: Path,
    *,
    keyring: Path | None = None,
    signature: Path | None = None,
    fingerprint: str | None = None,
    require_signature: bool = False,
    kernel_check: KernelCheck | None = xen_kernel_check,
) -> VerifyReport:
    """Check a bundle directory or tarball as its user would. Never raises for a bad bundle: see .problems."""
    target = Path(target)
    c = _Checks()
    with contextlib.ExitStack() as stack:
        tarball: Path | None = None
        if target.is_file():
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hurdxen-verify-")))
            try:
                d = _safe_extract(target, tmp)
            except HurdxenError as e:
                c.problems.append(e.message)
                return VerifyReport(str(target), None, tuple(c.problems), (), (), None)
            c.checked.append(f"tarball unpacked safely ({d.name}/)")
            sig = signature or (target.parent / SIGNATURE if (target.parent / SIGNATURE).is_file() else None)
            outer = target.parent / SUMS
            if outer.is_file() and (d / SUMS).is_file() and outer.read_bytes() != (d / SUMS).read_bytes():
                c.problems.append(f"{outer} differs from the {SUMS} inside the tarball")
        elif target.is_dir():
            d = target
            sig = signature or (d / SIGNATURE if (d / SIGNATURE).is_file() else None)
            published = d / f"{d.resolve().name}.tar.gz"  # `latest` is a symlink to the release
            tarball = published if published.is_file() else None
        else:
            return VerifyReport(str(target), None, (f"{target} does not exist",), (), (), None)
        release, signed_by = _verify_tree(c, d, sig, keyring, fingerprint, require_signature, kernel_check, tarball)
        if tarball is not None:
            _compare_tarball(c, d, tarball)
    return VerifyReport(str(target), release, tuple(c.problems), tuple(c.checked), tuple(c.warnings), signed_by)


def _verify_tree(
    c: _Checks,
    d: Path,
    sig: Path | None,
    keyring: Path | None,
    fingerprint: str | None,
    require_signature: bool,
    kernel_check: KernelCheck | None,
    tarball: Path | None,
) -> tuple[str | None, str | None]:
    sums_path = d / SUMS
    if not sums_path.is_file():
        c.problems.append(f"{SUMS} is missing")
        return None, None
    raw_sums = _read_meta(c, sums_path)
    if raw_sums is None:
        return None, None
    sums, bad = parse_sums(raw_sums.decode(errors="replace"))
    if bad:
        c.problems.append(f"{SUMS}: malformed {', '.join(bad[:3])}")
    present, odd = _tree_entries(d)
    for name, kind in odd:
        # only regular files and directories: a FIFO blocks a reader, a device or link reaches outside the bundle
        c.problems.append(f"{printable(name)}: a {kind}, not a regular file")
    actual: dict[str, str] = {}
    for name, want in sorted(sums.items()):
        p = present.get(name)
        if p is None:
            c.problems.append(f"{printable(name)}: listed in {SUMS} but missing")
            continue
        actual[name] = fsutil.sha256_file(p)
        if actual[name] != want:
            c.problems.append(
                f"{printable(name)}: sha256 mismatch ({SUMS} says {want[:16]}…, file is {actual[name][:16]}…)"
            )
    allowed_extra = {SUMS, SIGNATURE} | ({tarball.name} if tarball else set())
    for name in present:
        if name not in sums and name not in allowed_extra:
            c.problems.append(f"{printable(name)}: not listed in {SUMS}")
    if not c.problems:
        c.checked.append(f"{SUMS}: {len(sums)} files")

    signed_by: str | None = None
    if sig is not None:
        signed_by = _check_signature(c, sums_path, sig, keyring, fingerprint)
    elif require_signature:
        c.problems.append(f"{SIGNATURE} is missing and a signature was required")

    release: str | None = None
    if MANIFEST not in sums:
        c.problems.append(f"{MANIFEST}: not listed in {SUMS}")
        return release, signed_by
    m = _load_json(c, d / MANIFEST, "manifest")
    if m is None:
        return release, signed_by
    release = m.get("release")
    files = m.get("files", {})
    for name, want in sorted(files.items()):
        if name not in actual:
            c.problems.append(f"{MANIFEST}: lists {printable(name)}, which the bundle does not hold")
        elif actual[name] != want:
            c.problems.append(
                f"{MANIFEST}: {printable(name)} sha256 {want[:16]}… does not match the file ({actual[name][:16]}…)"
            )
    for name in actual:
        if name not in files and name not in (MANIFEST, PROVENANCE, SUMS):
            c.problems.append(f"{MANIFEST}: does not list {printable(name)}")
    if m.get("signed") and sig is None:
        c.problems.append(f"{MANIFEST} says signed by {m.get('signing_key')}, but {SIGNATURE} is missing")
    if not m.get("signed"):
        c.warnings.append("unsigned release (the manifest says so)")
    elif signed_by and m.get("signing_key") and signed_by.upper() != str(m["signing_key"]).upper():
        c.problems.append(f"{MANIFEST} names key {m['signing_key']}, but {SIGNATURE} was made by {signed_by}")
    boot = m.get("boot", {})
    if not boot.get("passed"):
        c.warnings.append("released without a passing boot check (allow_unbooted)")
    # Provenance: its subjects must be exactly these files.
    prov = _load_json(c, d / PROVENANCE, "provenance")
    if prov is not None:
        subjects = {s["name"]: s["digest"]["sha256"] for s in prov.get("subject", [])}
        wrong = sorted(n for n, h in subjects.items() if actual.get(n) != h)
        if wrong:
            c.problems.append(
                f"{PROVENANCE}: subject {printable(wrong[0])} does not match the file"
                + (f" (+{len(wrong) - 1} more)" if len(wrong) > 1 else "")
            )
        elif set(subjects) != set(actual) - {PROVENANCE, SUMS}:
            c.problems.append(f"{PROVENANCE}: subjects are not the bundle's files")
    if not any(p.startswith(f"{MANIFEST}") or p.startswith(PROVENANCE) for p in c.problems):
        c.checked.append(f"{MANIFEST} and {PROVENANCE} match the files")
    _check_disks(c, d, m, actual)
    if kernel_check is not None:
        for rel, expect in sorted(m.get("kernels", {}).items()):
            if rel not in actual:
                continue
            problems, warns = kernel_check(d / rel, expect)
            c.problems += [f"{rel}: {p}" for p in problems]
            c.warnings += [f"{rel}: {w}" for w in warns]
            if not problems:
                c.checked.append(
                    f"{rel}: Xen notes fit a {expect.get('bits')}-bit"
                    + (" PAE" if expect.get("pae") else "")
                    + " guest"
                )
    return release, signed_by


MAX_DISK = 4097 << 20  # recipes/rootdisk.toml's largest filesystem (4096 MiB) and an MBR


def _check_disks(c: _Checks, d: Path, m: Mapping[str, Any], actual: Mapping[str, str]) -> None:
    """Each root disk, unpacked as its user will (bounded: a gzip bomb stops at MAX_DISK), is the image the
    manifest names."""
    disks = m.get("rootdisks", {})
    for rel, rec in sorted(disks.items() if isinstance(disks, Mapping) else []):
        if rel not in actual or not isinstance(rec, Mapping):
            continue
        h, size = hashlib.sha256(), 0
        try:
            with gzip.open(d / rel, "rb") as f:
                while chunk := f.read(1 << 20):
                    size += len(chunk)
                    if size > MAX_DISK:
                        break
                    h.update(chunk)
        except (OSError, EOFError, zlib.error) as e:
            c.problems.append(f"{printable(rel)}: not a readable gzip file ({printable(str(e))})")
            continue
        if size > MAX_DISK:
            c.problems.append(f"{printable(rel)}: unpacks past {MAX_DISK >> 20} MiB")
        elif h.hexdigest() != rec.get("image_sha256"):
            c.problems.append(f"{printable(rel)}: unpacked, its sha256 is not the manifest's image_sha256")
        else:
            c.checked.append(f"{rel}: unpacks to the image the manifest names ({size} bytes)")


def verify_cli(argv: list[str]) -> int:
    """`hurdxen verify-release DIR-OR-TARBALL [--keyring KEY.asc] [--fingerprint FPR]`: exit 0 only when OK."""
    import argparse

    p = argparse.ArgumentParser(prog="hurdxen verify-release", description=verify_cli.__doc__)
    p.add_argument("target", type=Path, help="a bundle directory, a published one, or the .tar.gz")
    p.add_argument("--keyring", type=Path, help="the publisher's public key (armoured or binary) or a GNUPGHOME")
    p.add_argument("--signature", type=Path, help="SHA256SUMS.asc, when not beside the tarball")
    p.add_argument("--fingerprint", help="the signing key's fingerprint you expect")
    p.add_argument("--require-signature", action="store_true", help="fail on an unsigned release")
    p.add_argument("--no-kernel-check", action="store_true", help="skip the kernels' Xen-notes check")
    a = p.parse_args(argv)
    report = verify(
        a.target,
        keyring=a.keyring,
        signature=a.signature,
        fingerprint=a.fingerprint,
        require_signature=a.require_signature,
        kernel_check=None if a.no_kernel_check else xen_kernel_check,
    )
    print(report.render(), end="")
    report.raise_for_problems()  # the report above, then one `error:` line (stderr) and exit 1
    return 0


def _compare_tarball(c: _Checks, d: Path, tarball: Path) -> None:
    """A published directory carries its tarball: it must hold the same files."""
    with tempfile.TemporaryDirectory(prefix="hurdxen-verify-") as tmp:
        try:
            inner = _safe_extract(tarball, Path(tmp))
        except HurdxenError as e:
            c.problems.append(e.message)
            return
        a = {n: fsutil.sha256_file(p) for n, p in files_below(inner).items()}
        b = {n: fsutil.sha256_file(p) for n, p in files_below(d).items() if n not in (tarball.name, SIGNATURE)}
        if a != b:
            diff = sorted(n for n in set(a) | set(b) if a.get(n) != b.get(n))
            c.problems.append(f"{tarball.name}: differs from the directory in {diff[0]}")
        else:
            c.checked.append(f"{tarball.name}: same files as the directory")
