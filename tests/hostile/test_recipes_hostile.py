"""Recipes from a pull request and overlays: bounded values, one line, blamed on the file (or the command line) that
holds the mistake; `hurdxen recipes` and doit give the same answer."""

from __future__ import annotations

from pathlib import Path

import pytest
from project import copy_project, edit

from hurdxen.core.errors import HurdxenError
from hurdxen.pipeline import recipes
from tests.hostile.harness import one_line, refused, run_cli

OVERLAY = "hurdxen.local.toml"
MIG_SHA = "684c897b62fdeaa84608738f76facb11d41335312c3488d27c339a51393376e9"


@pytest.fixture
def recipe_root(tmp_path: Path) -> Path:
    """Every shipped recipe (a pull request can touch any of them)."""
    return copy_project(tmp_path / "project", ("recipes",), recipes=None)


NO_HINT = ("bad-url-with-password", "release-version-dotdot", "patches-dir-dotdot", "prebuilt-path-escape")


def load_error(root: Path, overrides: dict[str, str] | None = None, hint: bool = True) -> str:
    with pytest.raises(HurdxenError) as e:
        recipes.load(root, overrides=overrides or {})
    return refused(e, hint)


# (id, overlay text, words that must be in the line — the overlay is named)
OVERLAYS = [
    ("misspelled-table", "[mig.sorce]\nurl = 'http://x/y'\n", f"{OVERLAY}: mig.sorce: unknown key"),
    ("git-to-tarball", "[gnumach.source]\ntarball = 'http://x/g.tar.gz'\nsha256 = '" + "0" * 64 + "'\n", OVERLAY),
    ("bad-url-with-password", "[mig.source]\nurl = 'http://user:secret@host/x y'\n", "user:***@host"),
    ("jobs-huge", "[gnumach.build]\njobs = 100000000000000000000\n", "out of range"),
    ("jobs-zero", "[gnumach.build]\njobs = 0\n", "out of range"),
    ("nul-in-cflags", '[gnumach.build]\ncflags = "-O2\\u0000-evil"\n', "NUL"),
    ("megabyte-string", "[gnumach.build]\ncflags = '" + "A" * (1 << 20) + "'\n", "longer than 4096"),
    ("upper-case-sha", f"[mig.source]\nsha256 = '{MIG_SHA.upper()}'\n", "lower-case"),
    ("release-name-300", "[release]\nname = '" + "a" * 300 + "'\n", "longer than 64"),
    ("release-version-dotdot", "[release]\nversion = '../x'\n", "release.version"),
    ("patches-dir-dotdot", "[gnumach.patches]\ndir = '../../../../../etc'\nsha256 = {}\n", "gnumach.patches.dir"),
    ("prebuilt-path-escape", "[gnumach.prebuilt.debian-xen-486]\npath = '../../../../x'\n", "prebuilt"),
    ("deep-nesting", "a = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ("not-a-table", "mig = 3\n", "expected a table"),
]


@pytest.mark.parametrize(("case", "text", "words"), OVERLAYS, ids=[c[0] for c in OVERLAYS])
def test_hostile_overlay(case: str, text: str, words: str, recipe_root: Path) -> None:
    (recipe_root / OVERLAY).write_text(text)
    line = load_error(recipe_root, hint=case not in NO_HINT)
    assert words in line, line
    assert len(line) < 3000
    if case not in ("deep-nesting", "not-a-table"):
        assert line.startswith(f"error: {OVERLAY}: "), line


def test_password_never_printed(recipe_root: Path) -> None:
    (recipe_root / OVERLAY).write_text("[mig.source]\nurl = 'http://user:secret@host/x y'\n")
    assert "secret" not in load_error(recipe_root, hint=False)


@pytest.mark.parametrize(
    ("words", "expect"),
    [
        ({"mig.sorce.url": "x"}, "the command line: mig.sorce: unknown key"),
        ({"gnumach..jobs": "3"}, "the command line: gnumach..jobs: empty key component"),
        ({"gnumach.build.jobs.x": "1"}, "the command line: gnumach.build.jobs: expected an integer"),
        ({"gnumach.build.jobs": "1e30"}, "the command line: gnumach.build.jobs"),
        ({"mig.": "x"}, "empty key component"),
        ({"release.name": "x" * 300}, "the command line: release.name: is longer than 64"),
    ],
    ids=["misspelled", "double-dot", "below-a-number", "float-jobs", "trailing-dot", "long-name"],
)
def test_hostile_command_line(words: dict[str, str], expect: str, recipe_root: Path) -> None:
    assert expect in load_error(recipe_root, words)


@pytest.mark.parametrize(
    ("file", "old", "new", "words"),
    [
        ("mig.toml", f'sha256 = "{MIG_SHA}"', f'sha256 = "{MIG_SHA}"\n\xff', "recipes/mig.toml: not UTF-8"),
        ("release.toml", 'name = "hurdxen"', 'name = "' + "r" * 300 + '"', "recipes/release.toml: name"),
        ("gnumach.toml", "jobs = 2", "jobs = 100000000000000000000", "recipes/gnumach.toml: build.jobs"),
        ("gnumach.toml", 'cflags = "-g -O2"', 'cflags = "-g\\u0000"', "recipes/gnumach.toml: build.cflags"),
    ],
    ids=["non-utf8-recipe", "long-release-name", "jobs-1e20", "nul-cflags"],
)
def test_hostile_recipe_file(file: str, old: str, new: str, words: str, recipe_root: Path) -> None:
    path = recipe_root / "recipes" / file
    if "\xff" in new:
        path.write_bytes(path.read_bytes().replace(old.encode(), old.encode() + b"\n\xff"))
    else:
        edit(path, old, new)
    assert words in load_error(recipe_root)


def test_non_utf8_overlay(recipe_root: Path) -> None:
    (recipe_root / OVERLAY).write_bytes(b"[mig.source]\nurl = '\xff'\n")
    assert f"{OVERLAY}: not UTF-8" in load_error(recipe_root)


@pytest.mark.parametrize(
    "overlay",
    ["[release]\nversion = '../x'\n", "[gnumach.patches]\ndir = '../../../../../etc'\nsha256 = {}\n"],
    ids=["version", "patches-dir"],
)
def test_hurdxen_recipes_is_the_same_validator(
    overlay: str, recipe_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`hurdxen recipes` used to say ok where doit refused: now the same check, the same line."""
    (recipe_root / OVERLAY).write_text(overlay)
    code, out, err = run_cli(["recipes", "--root", str(recipe_root)], capsys)
    assert code == 1 and out == ""
    assert one_line(err, hint=False) == load_error(recipe_root, hint=False)


def test_long_value_is_cut_in_the_message(recipe_root: Path) -> None:
    (recipe_root / OVERLAY).write_text("[mig.source]\nurl = 'ftp://" + "x" * 4000 + "'\n")
    line = load_error(recipe_root, hint=False)
    assert "more characters" in line and len(line) < 1000


# Every C0 control, DEL, every C1 control and the Unicode line and paragraph separators.
CONTROLS = [chr(c) for c in (*range(0x01, 0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029)]


def _string_leaves(data: object, path: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    if isinstance(data, dict):
        return [leaf for k, v in data.items() for leaf in _string_leaves(v, (*path, k))]
    if isinstance(data, list):
        return [leaf for i, v in enumerate(data) for leaf in _string_leaves(v, (*path, i))]
    return [path] if isinstance(data, str) else []


def test_every_control_character_in_every_recipe_string(recipe_root: Path) -> None:
    """Each string of each shipped recipe, with a control character appended (every character in turn): refused
    with one line naming the file and the key path, before any task (the validator's one walk)."""
    import copy
    import tomllib

    n = 0
    for name in recipes.known_recipes():
        shown = f"recipes/{name}.toml"
        data = tomllib.loads((recipe_root / shown).read_text())
        for k, path in enumerate(_string_leaves(data)):
            ch = CONTROLS[(n + k) % len(CONTROLS)]
            bad = copy.deepcopy(data)
            node = bad
            for p in path[:-1]:
                node = node[p]  # type: ignore[index]
            node[path[-1]] = node[path[-1]] + "x" + ch + "y"  # type: ignore[index]
            with pytest.raises(HurdxenError) as e:
                recipes.validate(bad, name, shown)
            line = refused(e)
            assert line.startswith(f"error: {shown}: ") and f"control character U+{ord(ch):04X}" in line, line
            n += 1
    assert n > 100, n  # the shipped recipes hold well over a hundred strings


@pytest.mark.parametrize(
    ("case", "text", "key"),
    [
        ("esc-in-cc", '[gnumach.variants.xen-pae]\ncc = "gcc\\u001b[2J"\n', "gnumach.variants.xen-pae.cc"),
        ("cmdline-new-line",
         '[[boot.cases]]\nname = "x"\nkernel = "xen-pae"\ncmdline = "x\\"\\nkernel = \\"/etc/evil"\n',
         "boot.cases[0].cmdline"),
        ("cr-in-cflags", '[gnumach.build]\ncflags = "-O2\\r-evil"\n', "gnumach.build.cflags"),
        ("disk-line-separator", '[domains]\ndisk = ["phy:sda4,hda,w\\u2028x"]\n', "domains.disk[0]"),
        ("c1-csi-in-url", '[mig.source]\nurl = "http://x/\\u009b2J"\n', "mig.source.url"),
        ("esc-in-key", "[hurd-modules.variants.\"a\\u001bb\"]\nbits = 32\n", "hurd-modules.variants"),
    ],
    ids=lambda v: v if isinstance(v, str) and "\n" not in v and len(v) < 25 else "",
)  # fmt: skip
def test_control_characters_in_overlays(case: str, text: str, key: str, recipe_root: Path) -> None:
    (recipe_root / OVERLAY).write_text(text)
    line = load_error(recipe_root)
    assert line.startswith(f"error: {OVERLAY}: ") or key.split(".")[0] in line, line
    assert key in line and "control character" in line, line


def test_a_schema_can_allow_newlines_where_a_value_is_a_script(recipe_root: Path) -> None:
    """pv-grub2's extra_config is GRUB script lines: its schema allows newlines and tabs (x-controls), nothing
    else; every other string allows none."""
    import tomllib

    data = tomllib.loads((recipe_root / "recipes" / "pvgrub2.toml").read_text())
    data["images"][0]["extra_config"] = "set debug=xen\n\tset pager=1\n"
    recipes.validate(data, "pvgrub2", "recipes/pvgrub2.toml")
    data["images"][0]["extra_config"] = "set debug=xen\x1b[2J\n"
    with pytest.raises(HurdxenError) as e:
        recipes.validate(data, "pvgrub2", "recipes/pvgrub2.toml")
    assert "images[0].extra_config: contains the control character U+001B at offset 13" in refused(e)
    data["images"][0]["extra_config"] = "x"
    data["images"][0]["name"] = "a\nb"
    with pytest.raises(HurdxenError) as e:
        recipes.validate(data, "pvgrub2", "recipes/pvgrub2.toml")
    assert "images[0].name: contains the control character U+000A" in refused(e)


def test_one_quoting_function_per_format() -> None:
    from hurdxen.core import quoting

    assert quoting.xl_value("a'b\"c\\d") == '"a\'b\\"c\\\\d"' and quoting.xl_value(["x", 3]) == "['x', 3]"  # type: ignore[list-item]
    assert quoting.grub_word("$(x) y") == "'$(x) y'" and quoting.grub_text('a"$\\b') == 'a\\"\\$\\\\b'
    assert quoting.shell_word("a b'c") == "'a b'\"'\"'c'"
    for f in (quoting.xl_value, quoting.grub_word, quoting.grub_text, quoting.shell_word):
        with pytest.raises(HurdxenError, match="control character"):
            f("x\nkernel = '/etc/evil'")
