"""Recipe validation: the shipped recipes pass; each broken one fails with one exact, actionable line."""

from __future__ import annotations

from pathlib import Path

import pytest
from project import CODE, edit

from hurdxen.core.errors import HurdxenError
from hurdxen.pipeline import recipes

ORIG_URL = "http://deb.debian.org/debian/pool/main/m/mig/mig_1.8+git20231217.orig.tar.xz"
ORIG_SHA = "684c897b62fdeaa84608738f76facb11d41335312c3488d27c339a51393376e9"


def load_error(root: Path, overrides: dict[str, str] | None = None) -> str:
    with pytest.raises(HurdxenError) as info:
        recipes.load(root, overrides=overrides or {})
    return info.value.render()


KNOWN = ", ".join(recipes.known_recipes())


def test_shipped_recipes_validate() -> None:
    r = recipes.load(CODE, overrides={}, overlay=CODE / "no-such-overlay.toml")
    assert sorted(r.files.values()) == sorted(f"recipes/{p.name}" for p in (CODE / "recipes").glob("*.toml"))
    assert {"recipes/base.toml", "recipes/images.toml", "recipes/mig.toml"} <= set(r.files.values())
    assert r["base"]["base"]["suite"] == "bookworm"
    assert sorted(r["mig"]["targets"]) == ["i686-gnu", "x86_64-gnu"]
    assert r.settings == {}


def test_every_shipped_recipe_has_a_schema() -> None:
    shipped = sorted(p.stem for p in (CODE / "recipes").glob("*.toml"))
    assert set(shipped) <= set(recipes.known_recipes())
    assert {"base", "images", "mig"} <= set(recipes.known_recipes())


# (file, old text, new text, exact message)
BROKEN = [
    pytest.param(
        "mig.toml",
        f'sha256 = "{ORIG_SHA}"',
        'sha256 = "abc"',
        "error: recipes/mig.toml: source.sha256: expected 64 lower-case hex digits, got 'abc' "
        "(hint: sha256sum FILE prints it in lower case)",
        id="bad-sha256",
    ),
    pytest.param(
        "base.toml",
        'variant = "minbase"',
        'variant = "minbase"\nflavour = "x"',
        "error: recipes/base.toml: base.flavour: unknown key "
        "(hint: allowed here: components, include, mirror, snapshot, source_date_epoch, suite, variant)",
        id="unknown-key",
    ),
    pytest.param(
        "mig.toml",
        "[targets.i686-gnu]\n",
        "[targets.i686-gnu]\nextra = 1\n",
        "error: recipes/mig.toml: targets.i686-gnu.extra: unknown key "
        "(hint: allowed here: compiler, headers, include_subdir)",
        id="unknown-nested-key",
    ),
    pytest.param(
        "base.toml",
        'suite = "bookworm"\n',
        "",
        "error: recipes/base.toml: base.suite: missing (hint: the Debian suite, e.g. bookworm)",
        id="missing-key",
    ),
    pytest.param(
        "mig.toml",
        '[patches]\nurl = "http://deb.debian.org/debian/pool/main/m/mig/mig_1.8+git20231217-11.debian.tar.xz"\n',
        "[patches]\n",
        "error: recipes/mig.toml: patches.url: missing (hint: add it)",
        id="missing-nested-key",
    ),
    pytest.param(
        "base.toml",
        "source_date_epoch = 1767225600",
        'source_date_epoch = "1767225600"',
        "error: recipes/base.toml: base.source_date_epoch: expected an integer, got a string "
        "(hint: write the number without quotes)",
        id="wrong-type",
    ),
    pytest.param(
        "base.toml",
        'components = ["main"]',
        'components = "main"',
        'error: recipes/base.toml: base.components: expected an array, got a string (hint: write a list: ["…", "…"])',
        id="wrong-type-array",
    ),
    pytest.param(
        "base.toml",
        'variant = "minbase"',
        'variant = "tiny"',
        "error: recipes/base.toml: base.variant: expected one of 'minbase', 'buildd', 'essential', 'required', "
        "'important', 'standard', got 'tiny'",
        id="bad-enum",
    ),
    pytest.param(
        "mig.toml",
        "[targets.x86_64-gnu]",
        "[targets.x86_64-linux]",
        "error: recipes/mig.toml: targets.x86_64-linux: unknown name (expected one of 'i686-gnu', 'x86_64-gnu')",
        id="unknown-target",
    ),
    pytest.param(
        "mig.toml",
        f'url = "{ORIG_URL}"',
        'url = "ftp:/nowhere"',
        "error: recipes/mig.toml: source.url: expected an http(s):// or file:// URL or an absolute path, "
        "got 'ftp:/nowhere'",
        id="bad-url",
    ),
    pytest.param(
        "base.toml",
        'mirror = "http://deb.debian.org/debian"',
        'mirror = "deb.debian.org"',
        "error: recipes/base.toml: base.mirror: expected an http://, https:// or file:// URL, got 'deb.debian.org'",
        id="bad-mirror-url",
    ),
    pytest.param(
        "mig.toml",
        'compiler = "gcc -m32"',
        'compiler = "gcc -m32',
        "error: recipes/mig.toml: not valid TOML: Illegal character '\\n' (at line 13, column 21) "
        "(hint: fix the syntax at the line named)",
        id="toml-syntax",
    ),
    pytest.param(
        "base.toml",
        'components = ["main"]',
        "components = []",
        "error: recipes/base.toml: base.components: needs at least 1 entry",
        id="empty-list",
    ),
    pytest.param(
        "base.toml",
        'components = ["main"]',
        'components = ["main", "main"]',
        "error: recipes/base.toml: base.components: has duplicate entries (hint: list each entry once)",
        id="duplicates",
    ),
    pytest.param(
        "base.toml",
        "source_date_epoch = 1767225600",
        "source_date_epoch = -5",
        "error: recipes/base.toml: base.source_date_epoch: -5 is out of range (must be ≥ 0) (hint: use a value ≥ 0)",
        id="out-of-range",
    ),
    pytest.param(
        "images.toml",
        "[image.builder]",
        "[image.Builder]",
        "error: recipes/images.toml: image.Builder: bad name 'Builder' "
        "(expected lower-case letters, digits and -, as in containers/<name>/)",
        id="bad-image-name",
    ),
    pytest.param(
        "mig.toml",
        'version = "2:1.8+git20221224-2", arch = "i386"',
        'version = "latest", arch = "i386"',
        "error: recipes/mig.toml: targets.i686-gnu.headers.version: "
        "expected a Debian version such as 2:1.8+git20221224-2, got 'latest'",
        id="bad-version",
    ),
]


@pytest.mark.parametrize(("file", "old", "new", "message"), BROKEN)
def test_broken_recipe(recipe_root: Path, file: str, old: str, new: str, message: str) -> None:
    edit(recipe_root / "recipes" / file, old, new)
    assert load_error(recipe_root) == message


def test_several_problems_are_counted(recipe_root: Path) -> None:
    p = recipe_root / "recipes" / "base.toml"
    edit(p, 'variant = "minbase"', 'variant = "tiny"')
    edit(p, 'suite = "bookworm"', 'suite = "Bookworm"')
    assert load_error(recipe_root) == (
        "error: recipes/base.toml: base.suite: expected a Debian suite name such as bookworm, got 'Bookworm' (+1 more)"
    )


def test_unknown_recipe_file(recipe_root: Path) -> None:
    (recipe_root / "recipes" / "kernel.toml").write_text("x = 1\n")
    assert load_error(recipe_root) == (
        f"error: recipes/kernel.toml: no recipe kind named 'kernel' (hint: known recipes: {KNOWN})"
    )


def test_no_recipes_directory(tmp_path: Path) -> None:
    assert load_error(tmp_path) == (
        f"error: {tmp_path}/recipes does not exist (hint: run doit from the project directory)"
    )


# ------------------------------------------------------------------ the overlay (hurdxen.local.toml)


def test_overlay_overrides_a_key(recipe_root: Path) -> None:
    (recipe_root / "hurdxen.local.toml").write_text(
        '[mig.source]\nurl = "/srv/mirror/mig.orig.tar.xz"\n\n[base]\nmirror = "http://mirror.example/debian"\n'
    )
    r = recipes.load(recipe_root, overrides={})
    assert r["mig"]["source"]["url"] == "/srv/mirror/mig.orig.tar.xz"
    assert r["mig"]["source"]["sha256"] == ORIG_SHA  # the rest of the table stays
    assert r["base"]["base"]["mirror"] == "http://mirror.example/debian"
    assert r["base"]["base"]["suite"] == "bookworm"


def test_overlay_full_path_also_works(recipe_root: Path) -> None:
    (recipe_root / "hurdxen.local.toml").write_text('[base.base]\nsuite = "trixie"\n')
    assert recipes.load(recipe_root, overrides={})["base"]["base"]["suite"] == "trixie"


def test_overlay_bad_value_names_the_overlay(recipe_root: Path) -> None:
    (recipe_root / "hurdxen.local.toml").write_text('[mig.targets.i686-gnu.headers]\nversion = "latest"\n')
    assert load_error(recipe_root) == (
        "error: hurdxen.local.toml: mig.targets.i686-gnu.headers.version: "
        "expected a Debian version such as 2:1.8+git20221224-2, got 'latest'"
    )


def test_overlay_bad_base_value_names_the_overlay(recipe_root: Path) -> None:
    (recipe_root / "hurdxen.local.toml").write_text('[base]\nsuite = "Trixie!"\n')
    assert load_error(recipe_root) == (
        "error: hurdxen.local.toml: base.suite: expected a Debian suite name such as bookworm, got 'Trixie!'"
    )


def test_overlay_unknown_recipe(recipe_root: Path) -> None:
    (recipe_root / "hurdxen.local.toml").write_text("[kernel]\nx = 1\n")
    assert load_error(recipe_root) == (
        "error: hurdxen.local.toml: kernel: no such recipe to override "
        "(hint: top-level tables: settings, base, images, mig)"
    )


def test_overlay_not_a_table(recipe_root: Path) -> None:
    (recipe_root / "hurdxen.local.toml").write_text("base = 1\n")
    assert load_error(recipe_root) == "error: hurdxen.local.toml: base: expected a table (hint: write it as [base])"


def test_overlay_syntax_error(recipe_root: Path) -> None:
    (recipe_root / "hurdxen.local.toml").write_text("[base\n")
    assert load_error(recipe_root).startswith("error: hurdxen.local.toml: not valid TOML: ")
    assert "(at line 1, column 6)" in load_error(recipe_root)


def test_overlay_from_environment(recipe_root: Path, tmp_path: Path, restore_env: object) -> None:
    other = tmp_path / "elsewhere.toml"
    other.write_text('[base]\nvariant = "tiny"\n')
    import os

    os.environ["HURDXEN_LOCAL"] = str(other)
    assert load_error(recipe_root) == (
        f"error: {other}: base.variant: expected one of 'minbase', 'buildd', 'essential', 'required', "
        "'important', 'standard', got 'tiny'"
    )


def test_overlay_settings(recipe_root: Path) -> None:
    (recipe_root / "hurdxen.local.toml").write_text(
        '[settings]\noffline = true\ntimeout = 5\nexecutor = "host"\nproxy = "http://proxy:3128"\n'
    )
    r = recipes.load(recipe_root, overrides={})
    assert dict(r.settings) == {"offline": True, "timeout": 5, "executor": "host", "proxy": "http://proxy:3128"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[settings]\nexecutor = "podman"\n',
            "error: hurdxen.local.toml: settings.executor: expected one of 'docker', 'host', got 'podman'",
        ),
        (
            "[settings]\nofline = true\n",
            "error: hurdxen.local.toml: settings.ofline: unknown key "
            "(hint: allowed here: cache, cache_push, download_deadline, download_min_rate, executor, offline, proxy, "
            "snapshot, stage_cache, stage_cache_keyring, stage_cache_max_bytes, stage_cache_signers, "
            "stage_cache_signing_key, stage_cache_timeout, timeout)",
        ),
        (
            '[settings]\nproxy = "proxy:3128"\n',
            "error: hurdxen.local.toml: settings.proxy: expected an http:// or https:// URL, got 'proxy:3128'",
        ),
        (
            'settings = "fast"\n',
            "error: hurdxen.local.toml: settings: expected a table (hint: write it as [settings])",
        ),
    ],
    ids=["bad-executor", "typo", "bad-proxy", "not-a-table"],
)
def test_overlay_bad_settings(recipe_root: Path, text: str, message: str) -> None:
    (recipe_root / "hurdxen.local.toml").write_text(text)
    assert load_error(recipe_root) == message


# ------------------------------------------------------------------ command-line overrides


def test_command_line_override(recipe_root: Path) -> None:
    r = recipes.load(
        recipe_root,
        overrides={
            "mig.targets.x86_64-gnu.compiler": "gcc -O0",
            "base.mirror": "http://mirror.example/debian",
            "base.source_date_epoch": "42",
            "settings.timeout": "7",
        },
    )
    assert r["mig"]["targets"]["x86_64-gnu"]["compiler"] == "gcc -O0"
    assert r["base"]["base"]["mirror"] == "http://mirror.example/debian"
    assert r["base"]["base"]["source_date_epoch"] == 42  # TOML-typed
    assert r.settings == {"timeout": 7}


def test_command_line_beats_overlay(recipe_root: Path) -> None:
    (recipe_root / "hurdxen.local.toml").write_text('[mig.targets.i686-gnu]\ncompiler = "gcc -m32 -O1"\n')
    r = recipes.load(recipe_root, overrides={"mig.targets.i686-gnu.compiler": "gcc -m32 -O3"})
    assert r["mig"]["targets"]["i686-gnu"]["compiler"] == "gcc -m32 -O3"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"mig.source.sha256": "abc"},
            "error: the command line: mig.source.sha256: expected 64 lower-case hex digits, got 'abc' "
            "(hint: sha256sum FILE prints it in lower case)",
        ),
        (
            {"base.mirror": "nope"},
            "error: the command line: base.mirror: expected an http://, https:// or file:// URL, got 'nope'",
        ),
        (
            {"base.colour": "blue"},
            "error: the command line: base.colour: unknown key "
            "(hint: allowed here: components, include, mirror, snapshot, source_date_epoch, suite, variant)",
        ),
        (
            {"nope.x": "1"},
            "error: the command line: nope.x: no such recipe key "
            "(hint: write RECIPE.KEY=VALUE with RECIPE one of base, images, mig or settings)",
        ),
        (
            {"settings.timeout": "0"},
            "error: the command line: settings.timeout: 0 is out of range (must be ≥ 1) (hint: use a value ≥ 1)",
        ),
        (
            {"mig.targets.i686-gnu.compiler": "12"},
            "error: the command line: mig.targets.i686-gnu.compiler: expected a string, got an integer "
            '(hint: quote it: "…")',
        ),
    ],
    ids=["bad-sha", "bad-mirror", "unknown-key", "unknown-recipe", "settings-range", "wrong-type"],
)
def test_command_line_bad_override(recipe_root: Path, overrides: dict[str, str], message: str) -> None:
    assert load_error(recipe_root, overrides) == message


def test_cli_checks_recipes(recipe_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hurdxen import cli

    assert cli.main(["recipes", "--root", str(recipe_root)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "recipes/base.toml: ok",
        "recipes/images.toml: ok",
        "recipes/mig.toml: ok",
    ]
    edit(recipe_root / "recipes" / "base.toml", 'variant = "minbase"', 'variant = "tiny"')
    assert cli.main(["recipes", "--root", str(recipe_root)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: recipes/base.toml: base.variant: expected one of")
    assert "Traceback" not in err


def test_recipe_reference_in_docs_is_current() -> None:
    """docs/recipes.md is derived from the schemas: regenerate it (`python -m hurdxen recipes --reference`)."""
    from hurdxen.pipeline import recipes as r

    assert (Path(__file__).resolve().parents[1] / "docs" / "recipes.md").read_text() == r.reference()
