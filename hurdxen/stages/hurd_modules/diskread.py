"""The `disk` source's step: files out of an installed Hurd's ext2 image, read with e2fsprogs' debugfs (no mount).

Run as a script inside the step (`python3 - <<EOF`, the builder image's Python; standard library only, so it also
runs under the host executor): `$DISK` is the image (`$OFFSET` bytes into it), `$WANT` lines of `<name> <path>`
(every path absolute inside the image), `$MAX_BYTES` the largest file it copies. Symlinks are resolved inside the
image as if it were `/` — at most MAX_HOPS of them, and a `..` above the image's root is refused, not clamped. It
writes `$OUT/<name>` for each file found and `$OUT/result.json`: `{"files": {name: {"path", "resolved", "size"}},
"missing": [names], "error": message or null}`; the stage turns an error into one line. debugfs runs in
catastrophic mode (-c: no bitmaps read), once per lookup, each with a time limit.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

MAX_HOPS = 16
TIMEOUT = 60  # seconds per debugfs call
_TYPE = re.compile(r"Type: (\w+)")
_SIZE = re.compile(r"\bSize: (\d+)")
_FAST_LINK = re.compile(r'Fast link dest: "(.*)"$', re.M)
_UNSAFE = re.compile(r'["\\\x00-\x1f\x7f]')


class Refused(Exception):
    pass


class Missing(Exception):
    pass


def debugfs(spec: str, command: str) -> str:
    try:
        r = subprocess.run(["debugfs", "-c", "-R", command, spec], capture_output=True, timeout=TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise Refused(f"debugfs took over {TIMEOUT} s for `{command}`") from None
    err = r.stderr.decode(errors="replace")
    if "while trying to open" in err or "Bad magic number" in err:
        raise Refused("debugfs cannot open it as an ext2 filesystem: " + err.strip().splitlines()[-1])
    return r.stdout.decode(errors="replace")


def stat(spec: str, path: str) -> tuple[str, int, str] | None:
    """(type, size, stat text) of `path`, or None when it does not exist."""
    out = debugfs(spec, f'stat "{path}"')
    t, s = _TYPE.search(out), _SIZE.search(out)
    if t is None or s is None:
        return None
    return t.group(1), int(s.group(1)), out


def link_target(spec: str, path: str, text: str, size: int) -> str:
    fast = _FAST_LINK.search(text)
    if fast:
        return fast.group(1)
    if size > 4096:
        raise Refused(f"{path}: a symlink of {size} bytes")
    return debugfs(spec, f'cat "{path}"')[:size]


def resolve(spec: str, path: str) -> tuple[str, int]:
    """`path` with every symlink followed inside the image: (the path of a regular file, its size)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if not done:
                raise Refused(f"{path}: a symlink leads above the image's root")
            done.pop()
            continue
        if _UNSAFE.search(part):
            # a name debugfs' own quoting could not hold (its requests are one line of quoted words)
            raise Refused(f"{path}: a name with quotes, backslashes or control characters on the way")
        here = "/" + "/".join([*done, part])
        st = stat(spec, here)
        if st is None:
            raise Missing(f"{path}: no {here}")
        kind, size, text = st
        if kind == "symlink":
            hops += 1
            if hops > MAX_HOPS:
                raise Refused(f"{path}: more than {MAX_HOPS} symlinks (a loop?)")
            target = link_target(spec, here, text, size)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
        elif parts and kind != "directory":
            raise Missing(f"{path}: {here} is a {kind}, not a directory")
        else:
            done.append(part)
            if not parts and kind != "regular":
                raise Refused(f"{path}: {here} is a {kind}, not a regular file")
            if not parts:
                return here, size
    raise Refused(f"{path}: the image's root is not a file")


def main() -> int:
    disk, offset, out = os.environ["DISK"], int(os.environ.get("OFFSET") or 0), os.environ["OUT"]
    max_bytes = int(os.environ["MAX_BYTES"])
    spec = f"{disk}?offset={offset}" if offset else disk
    result: dict[str, object] = {"files": {}, "missing": [], "error": None}
    files: dict[str, object] = {}
    missing: list[str] = []
    try:
        for line in os.environ["WANT"].splitlines():
            if not line.strip():
                continue
            name, path = line.split(" ", 1)
            try:
                resolved, size = resolve(spec, path)
            except Missing as e:
                missing.append(f"{name} ({e})")
                continue
            if size > max_bytes:
                raise Refused(f"{path}: {size} bytes, over the limit of {max_bytes}")
            dest = os.path.join(out, name)
            debugfs(spec, f'dump "{resolved}" "{dest}"')
            if not os.path.isfile(dest) or os.path.getsize(dest) != size:
                raise Refused(f"{path}: debugfs could not read {resolved} ({size} bytes)")
            files[name] = {"path": path, "resolved": resolved, "size": size}
    except Refused as e:
        result["error"] = str(e)
    result["files"], result["missing"] = files, missing
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
