"""Recipes: the pipeline's data. `recipes/<name>.toml`, each validated against `hurdxen/schemas/<name>.schema.json`
(JSON Schema, unknown keys rejected) after the local overlay (`hurdxen.local.toml`) and command-line overrides
(`doit build mig.source.url=…`) are merged in. Every recipe is validated before any task runs.
"""

from __future__ import annotations

import copy
import json
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, cast

import jsonschema

from hurdxen.core.errors import HurdxenError, printable

LOCAL_OVERLAY = "hurdxen.local.toml"
# Keys of the overlay that are not recipes: how bytes are fetched and where steps run.
SETTINGS_SCHEMA = "settings"


@dataclass(frozen=True)
class Recipes:
    root: Path  # the project directory
    data: Mapping[str, Mapping[str, Any]]  # recipe name -> validated content
    files: Mapping[str, str]  # recipe name -> file name for messages (relative)
    settings: Mapping[str, Any] = field(default_factory=dict)  # [network] etc. from the overlay
    # recipe name -> key path -> the overlay file or "the command line" that set it
    origin: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def where(self, name: str, keypath: str) -> str:
        """`FILE: KEY` for a message about one key: the overlay (or command line) when that set it."""
        for at, src in self.origin.get(name, {}).items():
            if keypath == at or keypath.startswith(at + "."):
                return f"{src}: {name}.{keypath}"
        return f"{self.files.get(name, name)}: {keypath}"

    def __getitem__(self, name: str) -> Mapping[str, Any]:
        try:
            return self.data[name]
        except KeyError:
            raise HurdxenError(
                f"recipes/{name}.toml is missing", hint=f"add it; see README's recipe reference for `{name}`"
            ) from None

    def __contains__(self, name: str) -> bool:
        return name in self.data


@cache
def schema(name: str) -> dict[str, Any]:
    try:
        text = resources.files("hurdxen").joinpath("schemas", f"{name}.schema.json").read_text()
    except FileNotFoundError:
        raise KeyError(name) from None
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def known_recipes() -> list[str]:
    names = []
    for entry in resources.files("hurdxen").joinpath("schemas").iterdir():
        n = entry.name
        if n.endswith(".schema.json") and n != f"{SETTINGS_SCHEMA}.schema.json":
            names.append(n.removesuffix(".schema.json"))
    return sorted(names)


def read_toml(path: Path, shown: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise HurdxenError(f"{shown}: not valid TOML: {e}", hint="fix the syntax at the line named") from e
    except RecursionError:
        raise HurdxenError(f"{shown}: nested too deeply", hint="a recipe is a few levels of tables") from None
    except UnicodeDecodeError as e:
        raise HurdxenError(
            f"{shown}: not UTF-8 text (byte {e.start}: {e.object[e.start : e.start + 1]!r})",
            hint="TOML files are UTF-8; re-save the file as UTF-8",
        ) from None
    except OSError as e:
        raise HurdxenError(f"{shown}: cannot read ({e.strerror})", hint="check the file's permissions") from e


def deep_merge(base: dict[str, Any], over: Mapping[str, Any], node: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`over` merged into `base`, table by table. With the recipe's schema as `node`, a table marked
    `"x-merge": "replace"` (a set that only makes sense whole, like a patch series and its pins) is replaced."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        child = _child_schema(node, k)
        whole = child is not None and child.get("x-merge") == "replace"
        if isinstance(v, Mapping) and isinstance(out.get(k), dict) and not whole:
            out[k] = deep_merge(out[k], v, child)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _child_schema(node: Mapping[str, Any] | None, key: str) -> Mapping[str, Any] | None:
    if not node:
        return None
    props = node.get("properties", {})
    child = props[key] if key in props else node.get("additionalProperties")
    return child if isinstance(child, Mapping) else None


def _key_path(path: Iterable[Any]) -> str:
    parts: list[str] = []
    for p in path:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts) or "(top level)"


_SCHEMA_TYPES = {
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "boolean": "a boolean",
    "array": "an array",
    "object": "a table",
}
_TYPE_HINTS = {
    "integer": "write the number without quotes",
    "number": "write the number without quotes",
    "string": 'quote it: "…"',
    "boolean": "write true or false, without quotes",
    "array": 'write a list: ["…", "…"]',
    "object": "write it as a [table]",
}


def _type_name(v: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(v), type(v).__name__)


def describe_error(err: jsonschema.ValidationError) -> tuple[str, str, str | None]:
    """(key path, what is wrong, hint) in words a user can act on."""
    path = list(err.absolute_path)
    s = err.schema if isinstance(err.schema, dict) else {}
    v = err.validator
    if v == "additionalProperties":
        allowed = sorted(s.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed)) if isinstance(err.instance, dict) else []
        key = _key_path([*path, extra[0]]) if extra else _key_path(path)
        return key, "unknown key", f"allowed here: {', '.join(allowed)}" if allowed else None
    if v == "required":
        missing = str(err.message).split("'")[1] if "'" in err.message else "?"
        prop = s.get("properties", {}).get(missing, {})
        return _key_path([*path, missing]), "missing", prop.get("description") or "add it"
    if "propertyNames" in err.schema_path:
        # A table's key (not its value) is wrong: name the key itself.
        name = err.instance
        key = _key_path([*path, name])
        if v == "enum":
            opts = ", ".join(repr(o) for o in cast(list[Any], err.validator_value))
            return key, f"unknown name (expected one of {opts})", s.get("x-hint")
        expect = s.get("x-expect") or f"a name matching {s.get('pattern')}"
        return key, f"bad name {_show(name)} (expected {expect})", s.get("x-hint")
    if v == "pattern" or v == "format":
        expect = s.get("x-expect") or f"a value matching {s.get('pattern')}"
        return _key_path(path), f"expected {expect}, got {_show(err.instance)}", s.get("x-hint")
    if v == "type":
        want = err.validator_value
        wants = want if isinstance(want, list) else [want]
        want_s = " or ".join(_SCHEMA_TYPES.get(str(w), str(w)) for w in wants)
        hint = s.get("x-hint") or _TYPE_HINTS.get(str(wants[0]))
        return _key_path(path), f"expected {want_s}, got {_type_name(err.instance)}", hint
    if v == "enum":
        opts = ", ".join(repr(o) for o in cast(list[Any], err.validator_value))
        return _key_path(path), f"expected one of {opts}, got {_show(err.instance)}", s.get("x-hint")
    if v == "const":
        return _key_path(path), f"expected {err.validator_value!r}, got {_show(err.instance)}", s.get("x-hint")
    if v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        bound = {"minimum": "≥", "maximum": "≤", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[str(v)]
        return (
            _key_path(path),
            f"{_show(err.instance)} is out of range (must be {bound} {err.validator_value})",
            s.get("x-hint") or f"use a value {bound} {err.validator_value}",
        )
    if v == "minItems":
        n = err.validator_value
        return _key_path(path), f"needs at least {n} {'entry' if n == 1 else 'entries'}", s.get("x-hint")
    if v == "uniqueItems":
        return _key_path(path), "has duplicate entries", "list each entry once"
    if v == "minLength":
        return _key_path(path), "must not be empty", s.get("x-hint")
    if v == "maxLength":
        n = err.validator_value
        what = f"is longer than {n} characters ({len(str(err.instance))})"
        return _key_path(path), what, s.get("x-hint") or f"shorten it to at most {n}"
    if v in ("oneOf", "anyOf", "not"):
        return _key_path(path), f"does not fit any allowed form ({_show(err.instance)})", s.get("x-hint")
    return _key_path(path), printable(err.message, 160), s.get("x-hint")


def _show(value: Any) -> str:
    """A recipe value in a message: repr, controls escaped, at most 80 characters (a 1 MB string is not echoed)."""
    return printable(repr(value), 80)


MAX_STRING = 4096  # characters of any recipe string (URLs, paths, flags); the schemas set tighter bounds
MAX_INT = 2**53  # beyond this a TOML integer is a mistake or an attack (and not exact as JSON)


# No recipe string may hold a control character (C0, DEL, C1, the Unicode line separators) unless its schema lists
# it in `x-controls`: a value reaches terminals (`doit list`), generated files (xl configs, grub.cfg) and build
# commands, where an ESC rewrites the screen and a newline starts a line of its own. No schema allows one today.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _deref(root: Mapping[str, Any], node: Any) -> Mapping[str, Any] | None:
    for _ in range(32):  # a local $ref chain, bounded
        if not isinstance(node, Mapping) or not str(node.get("$ref", "")).startswith("#/"):
            break
        target: Any = root
        for part in str(node["$ref"])[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, Mapping) else {}
        node = target
    return node if isinstance(node, Mapping) else None


def _schema_at(root: Mapping[str, Any], node: Mapping[str, Any] | None, key: Any) -> Mapping[str, Any] | None:
    """The schema of `key` below `node` (properties, patternProperties, additionalProperties, items)."""
    node = _deref(root, node)
    if node is None:
        return None
    if isinstance(key, int):
        return _deref(root, node.get("items"))
    props = node.get("properties", {})
    if key in props:
        return _deref(root, props[key])
    for pattern, sub in node.get("patternProperties", {}).items():
        if re.search(pattern, key):
            return _deref(root, sub)
    return _deref(root, node.get("additionalProperties"))


def _bad_string(data: str, node: Mapping[str, Any] | None) -> tuple[str, str] | None:
    if "\0" in data:
        return "contains a NUL character", "remove the \\u0000"
    if len(data) > MAX_STRING:
        return f"is longer than {MAX_STRING} characters ({len(data)})", "shorten it"
    allowed = str(node.get("x-controls", "")) if node else ""
    bad = next((m for m in CONTROL.finditer(data) if m.group() not in allowed), None)
    if bad is not None:
        return (
            f"contains the control character U+{ord(bad.group()):04X} at offset {bad.start()}",
            "recipe values are one line of printable text: remove it",
        )
    return None


def _bounds(
    data: Any, path: list[Any], root: Mapping[str, Any] | None = None, node: Mapping[str, Any] | None = None
) -> tuple[str, str, str | None] | None:
    """(key path, what, hint) of the first value no recipe may hold: NUL bytes and other control characters (unless
    the schema allows them), huge strings or integers. `node` is the value's schema (for `x-controls`)."""
    root = root or {}
    if isinstance(data, Mapping):
        for k, v in data.items():
            if isinstance(k, str) and len(k) > 256:
                return _key_path([*path, k[:40] + "…"]), f"is a key longer than 256 characters ({len(k)})", "shorten it"
            if isinstance(k, str) and (bad := _bad_string(k, None)):
                return _key_path(path) if path else "(top level)", f"has a key that {bad[0]}", bad[1]
            found = _bounds(v, [*path, k], root, _schema_at(root, node, k))
            if found:
                return found
    elif isinstance(data, list):
        for i, v in enumerate(data):
            found = _bounds(v, [*path, i], root, _schema_at(root, node, i))
            if found:
                return found
    elif isinstance(data, str):
        if bad := _bad_string(data, node):
            return _key_path(path), *bad
    elif isinstance(data, int) and not isinstance(data, bool) and abs(data) > MAX_INT:
        return _key_path(path), f"{_show(data)} is out of range", "use a smaller number"
    return None


def validate(
    data: Mapping[str, Any],
    schema_name: str,
    shown: str,
    origin: Mapping[str, str] | None = None,
    prefix: str = "",
) -> None:
    """Raise one clear line for the first problem (the rest are counted). `prefix` goes before every key path."""
    root = schema(schema_name)
    bad = _bounds(data, [], root, root)
    if bad is not None:
        key, what, hint = bad
        errors: list[jsonschema.ValidationError] = []
    else:
        validator = jsonschema.Draft202012Validator(root)
        errors = sorted(validator.iter_errors(data), key=lambda e: (list(map(str, e.absolute_path)), e.validator))
        if not errors:
            return
        key, what, hint = describe_error(errors[0])
    where = shown
    if origin:
        # Name the file the offending value came from when an overlay or the command line set it, and the key as
        # written there (`mig.source.url`; `base.mirror` for a recipe whose file is one table named after itself).
        # A key the overlay added below the failing one counts too (`[mig.sorce]`, a git source turned tarball).
        for at, src in origin.items():
            if key == at or key.startswith((at + ".", at + "[")) or at.startswith((key + ".", key + "[")):
                where = src
                if src != shown and not _self_named(schema_name):
                    key = f"{schema_name}.{key}"
                break
    if prefix:
        key = prefix if key == "(top level)" else f"{prefix}.{key}"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    raise HurdxenError(f"{where}: {key}: {what}{more}", hint=hint)


def _self_named(name: str) -> bool:
    """A recipe whose file is one table named after the recipe (recipes/base.toml is `[base]`)."""
    try:
        props = schema(name).get("properties", {})
    except KeyError:
        return False
    return list(props) == [name]


def _scoped(name: str, table: Mapping[str, Any]) -> Mapping[str, Any]:
    """An override of recipe `name` as a path inside its file: `[base] mirror = …` (overlay) and `base.mirror=…`
    (command line) mean `base.mirror` in recipes/base.toml, whose content is the table [base]."""
    if _self_named(name) and name not in table:
        return {name: table}
    return table


def cli_overrides() -> dict[str, str]:
    """`name.key=value` words given to doit (`doit build base.mirror=http://…`)."""
    from doit import doit_cmd

    raw = getattr(doit_cmd, "_CMDLINE_VARS", None) or {}
    return {str(k): str(v) for k, v in raw.items()}


def _parse_value(text: str) -> Any:
    """Command-line values are TOML values when they parse as one (numbers, booleans, arrays), else strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _flatten(d: Mapping[str, Any], prefix: str = "") -> Iterable[str]:
    for k, v in d.items():
        p = f"{prefix}.{k}" if prefix else k
        if isinstance(v, Mapping):
            yield from _flatten(v, p)
        else:
            yield p


def load(root: Path, overrides: Mapping[str, str] | None = None, overlay: Path | None = None) -> Recipes:
    """Read, merge and validate every recipe. Raises HurdxenError naming file and key path."""
    recipe_dir = root / "recipes"
    if not recipe_dir.is_dir():
        raise HurdxenError(f"{recipe_dir} does not exist", hint="run doit from the project directory")
    names = known_recipes()
    raw: dict[str, dict[str, Any]] = {}
    files: dict[str, str] = {}
    for path in sorted(recipe_dir.glob("*.toml")):
        name = path.stem
        shown = f"recipes/{path.name}"
        if name not in names:
            raise HurdxenError(f"{shown}: no recipe kind named {name!r}", hint=f"known recipes: {', '.join(names)}")
        raw[name] = read_toml(path, shown)
        files[name] = shown
    origin: dict[str, dict[str, str]] = {n: {} for n in raw}
    settings: dict[str, Any] = {}
    overlay_path = overlay or Path(os.environ.get("HURDXEN_LOCAL", root / LOCAL_OVERLAY))
    if overlay_path.is_file():
        shown = overlay_path.name if overlay_path.parent == root else str(overlay_path)
        over = read_toml(overlay_path, shown)
        for name, table in over.items():
            if name == "settings":
                if not isinstance(table, dict):
                    raise HurdxenError(f"{shown}: settings: expected a table", hint="write it as [settings]")
                settings = dict(table)
                validate(settings, SETTINGS_SCHEMA, shown, prefix="settings")
                continue
            if name not in raw:
                known = ", ".join(["settings", *sorted(raw)])
                raise HurdxenError(f"{shown}: {name}: no such recipe to override", hint=f"top-level tables: {known}")
            if not isinstance(table, dict):
                raise HurdxenError(f"{shown}: {name}: expected a table", hint=f"write it as [{name}]")
            table = dict(_scoped(name, table))
            raw[name] = deep_merge(raw[name], table, schema(name))
            for p in _flatten(table):
                origin[name][p] = shown
    for word, value in (overrides if overrides is not None else cli_overrides()).items():
        name, _, keypath = word.partition(".")
        if "" in word.split(".") or "\0" in word:
            raise HurdxenError(
                f"the command line: {printable(word, 80)}: empty key component",
                hint="write RECIPE.KEY.SUBKEY=VALUE without doubled or trailing dots",
            )
        if name == "settings" and keypath:
            settings = deep_merge(settings, _nest(keypath.split("."), _parse_value(value)))
            validate(settings, SETTINGS_SCHEMA, "the command line", prefix="settings")
            continue
        if name not in raw or not keypath:
            raise HurdxenError(
                f"the command line: {word}: no such recipe key",
                hint=f"write RECIPE.KEY=VALUE with RECIPE one of {', '.join(sorted(raw))} or settings",
            )
        table = _scoped(name, _nest(keypath.split("."), _parse_value(value)))
        raw[name] = deep_merge(raw[name], table, schema(name))
        for p in _flatten(table):
            origin[name][p] = "the command line"
    for name, data in raw.items():
        validate(data, name, files[name], origin[name])
    return Recipes(root=root, data=raw, files=files, settings=settings, origin=origin)


def _nest(keys: list[str], value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {keys[-1]: value}
    for k in reversed(keys[:-1]):
        out = {k: out}
    return out


# ------------------------------------------------------------------ reference (each setting is declared once: here)


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):  # a JSON pointer into this schema
            target = target[part.replace("~1", "/").replace("~0", "~")]
        return _resolve({**target, **{k: v for k, v in node.items() if k != "$ref"}}, root)
    return node


def _kind(node: dict[str, Any]) -> str:
    if "enum" in node:
        return " | ".join(json.dumps(v) for v in node["enum"])
    if "x-expect" in node:
        return str(node["x-expect"])
    t = node.get("type")
    return str(t) if t else ("one of several forms" if "oneOf" in node else "")


def _walk(
    node: dict[str, Any], root: dict[str, Any], path: str, rows: list[tuple[str, str, str, str]], required: bool
) -> None:
    node = _resolve(node, root)
    if path:
        rows.append((path, _kind(node), "yes" if required else "", str(node.get("description", ""))))
    props = node.get("properties", {})
    req = set(node.get("required", []))
    for k, v in props.items():
        _walk(v, root, f"{path}.{k}" if path else k, rows, k in req)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        _walk(extra, root, f"{path}.<name>" if path else "<name>", rows, False)
    items = node.get("items")
    if isinstance(items, dict) and items.get("properties"):
        _walk(items, root, f"{path}[]", rows, False)


def reference() -> str:
    """The recipe reference in Markdown, derived from the schemas (docs/recipes.md is this output)."""
    out = [
        "# Recipe reference",
        "",
        "Generated by `python -m hurdxen recipes --reference` from `hurdxen/schemas/`; do not edit by hand.",
        "Unknown keys are errors. Any key can be overridden in `hurdxen.local.toml` (a table named after the",
        "recipe) or on the command line (`doit build RECIPE.KEY=VALUE`).",
        "",
    ]
    for name in [*known_recipes(), SETTINGS_SCHEMA]:
        s = schema(name)
        title = "hurdxen.local.toml: [settings]" if name == SETTINGS_SCHEMA else f"recipes/{name}.toml"
        out += [
            f"## {title}",
            "",
            str(s.get("title", "")).split(": ", 1)[-1],
            "",
            "| key | value | required | meaning |",
            "|---|---|---|---|",
        ]
        rows: list[tuple[str, str, str, str]] = []
        _walk(s, s, "", rows, True)
        for key, kind, req, desc in rows:
            out.append(f"| `{key}` | {kind.replace('|', '/')} | {req} | {desc.replace('|', '/')} |")
        out.append("")
    return "\n".join(out)
