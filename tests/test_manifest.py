"""The one manifest writer and its typed reader: outputs by name, checked; a crafted manifest cannot point outside
its directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hurdxen.core.errors import HurdxenError
from hurdxen.pipeline import manifest


def written(d: Path) -> Path:
    d.mkdir()
    (d / "k.gz").write_bytes(b"kernel")
    manifest.write_raw(
        d,
        task="gnumach:xen-pae",
        identity="i" * 64,
        inputs={"source": {"git": {"url": "https://example.org/g.git", "commit": "4" * 40}}},
        step=manifest.in_process("tests.written"),
        outputs={"kernel.gz": "k.gz"},
        extra={"bits": 32},
    )
    return d


def test_written_and_read_by_name(tmp_path: Path) -> None:
    m = manifest.read(written(tmp_path / "a"))
    assert (m.stage, m.variant, m.task) == ("gnumach", "xen-pae", "gnumach:xen-pae")
    assert m.output("kernel.gz") == tmp_path / "a" / "k.gz"
    assert m.inputs["source"]["git"]["commit"] == "4" * 40
    assert m.step == {"executor": "in-process", "function": "tests.written"}
    assert m.fact("bits") == 32
    with pytest.raises(HurdxenError, match=r"names no output 'kernel' \(it has kernel.gz\)"):
        m.output("kernel")
    with pytest.raises(HurdxenError, match=r"its manifest has no 'pae'"):
        m.fact("pae")


def test_changed_output_refused(tmp_path: Path) -> None:
    d = written(tmp_path / "a")
    (d / "k.gz").write_bytes(b"other")
    with pytest.raises(HurdxenError, match=r"k.gz differs from its manifest .*doit gnumach:xen-pae"):
        manifest.read(d).output("kernel.gz")


def test_core_fields_required_by_the_writer(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="would replace a core field"):
        manifest.write_raw(tmp_path, task="a:b", identity="", inputs={}, step={}, outputs={}, extra={"outputs": {}})


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        (lambda m: m.pop("step"), "lacks step"),
        (lambda m: m.pop("inputs"), "lacks inputs"),
        (lambda m: m["outputs"].update({"x": {"path": "../../etc/passwd", "sha256": "0" * 64}}), "outputs.x"),
        (lambda m: m["outputs"].update({"x": {"path": "/etc/passwd", "sha256": "0" * 64}}), "outputs.x"),
        (lambda m: m["outputs"].update({"x": {"path": "k.gz"}}), "outputs.x"),
        (lambda m: m.update(outputs=[]), "outputs is not a table"),
    ],
)
def test_crafted_manifest_refused(tmp_path: Path, change: object, expect: str) -> None:
    d = written(tmp_path / "a")
    data = json.loads((d / manifest.MANIFEST).read_text())
    change(data)  # type: ignore[operator]
    (d / manifest.MANIFEST).write_text(json.dumps(data))
    with pytest.raises(HurdxenError) as e:
        manifest.read(d)
    assert expect in str(e.value) and "hint:" in str(e.value)


def test_missing_and_unreadable(tmp_path: Path) -> None:
    with pytest.raises(HurdxenError, match="has not been built"):
        manifest.read(tmp_path)
    (tmp_path / manifest.MANIFEST).write_text("{nope")
    with pytest.raises(HurdxenError, match="unreadable"):
        manifest.read(tmp_path)
