"""The pins lock (recipes/pins.lock): every resolved Debian pin — the URL that served it (archive or snapshot), its
sha256 and size, the key that signed its index and the keyring that had that key.

Committed with the recipes. `doit build` reads it (a pin whose sha256 is in the cache needs no network) and adds
what it resolves; `hurdxen pins update` rewrites it. JSON with sorted keys and one entry per line group, so a
change reads as a small diff.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hurdxen.core import fsutil
from hurdxen.core.errors import HurdxenError

if TYPE_CHECKING:
    from hurdxen.sources.fetch import DebPin

LOCK_FILE = Path("recipes") / "pins.lock"
FORMAT = "hurdxen-pins/1"
# Fields that describe where and when, not what: a change to them alone does not rewrite an entry.
_CIRCUMSTANTIAL = frozenset({"resolved", "url", "snapshot", "filename"})
MAX_LOCK_BYTES = 4 << 20


def path_for(root: Path) -> Path:
    return root / LOCK_FILE


def split_key(path: str) -> list[str]:
    """A TOML dotted key path (`a.b."libc0.3"`) as its keys."""
    out = re.findall(r'"((?:[^"\\]|\\.)*)"|([A-Za-z0-9_-]+)', path)
    return [q or b for q, b in out]


def get_key(data: Mapping[str, Any], keys: Sequence[str]) -> Any:
    node: Any = data
    for key in keys:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node


def committed(path: Path, pin: DebPin) -> bool:
    """True when `pin` is what the committed recipe says — not a mirror or version an overlay or the command line
    put there. A build records only such pins: a local override is a fact of one machine, not of the project."""
    keys = split_key(pin.version_key)
    if not keys:
        return False
    try:
        data = tomllib.loads((path.parent / f"{keys[0]}.toml").read_text())
    except (OSError, ValueError):
        return False
    archive = get_key(data, [*split_key(pin.key)[1:], "archive"])
    return bool(get_key(data, keys[1:]) == pin.version and archive == pin.archive)


def load(path: Path) -> dict[str, dict[str, Any]]:
    """The lock's entries by pin id; an absent lock is empty."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_LOCK_BYTES + 1)
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise HurdxenError(f"{path}: cannot read the pins lock ({e.strerror})") from None
    if len(raw) > MAX_LOCK_BYTES:
        raise HurdxenError(f"{path}: larger than {MAX_LOCK_BYTES} bytes", hint="not a pins lock?")
    try:
        data = fsutil.loads_json_bounded(raw)
    except ValueError as e:
        raise HurdxenError(
            f"{path}: not JSON ({e})", hint="restore it from git, or run `hurdxen pins update`"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("pins"), dict):
        raise HurdxenError(f"{path}: not a {FORMAT} lock", hint="restore it from git, or run `hurdxen pins update`")
    pins: dict[str, dict[str, Any]] = data["pins"]
    for ident, entry in pins.items():
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("version", "sha256", "url")):
            raise HurdxenError(f"{path}: pins.{ident}: lacks version, sha256 or url", hint="restore it from git")
        if len(entry["sha256"]) != 64 or not all(c in "0123456789abcdef" for c in entry["sha256"]):
            raise HurdxenError(f"{path}: pins.{ident}.sha256: not 64 hex digits", hint="restore it from git")
    return pins


def lookup(path: Path | None, pin: DebPin) -> dict[str, Any] | None:
    """The lock's entry for `pin` when it is for the pinned version (a hand-edited pin is resolved afresh)."""
    if path is None:
        return None
    e = load(path).get(pin.lock_id)
    if e is None or e.get("version") != pin.version:
        return None
    # The entry must name the pin it is filed under: its package, architecture and .deb file name.
    upstream = pin.version.split(":", 1)[-1]
    deb = f"{pin.package}_{upstream}_"
    name = str(e.get("filename", "")).rsplit("/", 1)[-1]
    if (
        e.get("package", pin.package) != pin.package
        or e.get("arch", pin.arch) != pin.arch
        or (name and not (name.startswith(deb) and name.endswith(".deb")))
    ):
        raise HurdxenError(
            f"{path}: pins.{pin.lock_id}: the entry names {e.get('package')} ({e.get('arch')}, {name or 'no file'}), "
            f"not {pin.package} {pin.version} ({pin.arch})",
            hint="restore recipes/pins.lock from git, or run `hurdxen pins update`",
        )
    return e


def dump(pins: Mapping[str, Mapping[str, Any]]) -> str:
    return json.dumps({"format": FORMAT, "pins": pins}, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def write(path: Path, pins: Mapping[str, Mapping[str, Any]]) -> None:
    fsutil.write_atomic(path, dump(pins))


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Serialise read-modify-write of the lock between parallel build processes (doit -n)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    keys = (set(a) | set(b)) - _CIRCUMSTANTIAL
    return all(a.get(k) == b.get(k) for k in keys)


def keep_unless_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """`old` when `new` says the same (a re-resolution must not churn the committed lock), else `new`."""
    if old is not None and old.get("version") == new.get("version") and _same(old, new):
        return dict(old)
    return dict(new)


def record(path: Path, pin: DebPin, entry: Mapping[str, Any]) -> bool:
    """Add or replace the entry for `pin`; True when the lock changed."""
    if not all(isinstance(entry.get(k), str) for k in ("version", "sha256", "url")):
        raise ValueError(f"lock entry for {pin.lock_id} lacks version, sha256 or url")
    with locked(path):
        pins = load(path)
        old = pins.get(pin.lock_id)
        if old is not None and old.get("version") == entry.get("version") and _same(old, entry):
            return False
        pins[pin.lock_id] = dict(entry)
        write(path, pins)
        return True
