"""Reading scenario files: YAML, ``extends`` chains, ``--set`` overrides, clear errors.

Every problem is reported before anything runs as an :class:`~carla_mr.errors.InputError`
naming the file, the key path and what was expected.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from carla_mr.config.scenario import Scenario
from carla_mr.errors import InputError


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    if path in chain:
        raise InputError(f"'extends' forms a cycle: {' -> '.join(map(str, chain + (path,)))}", field="extends",
                         source=str(path))
    if not path.is_file():
        raise InputError("file not found" if not path.exists() else "not a file", source=str(path))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InputError(f"not valid YAML{where}: {getattr(exc, 'problem', exc)}", source=str(path)) from exc
    except UnicodeDecodeError as exc:
        raise InputError("not a UTF-8 text file", source=str(path)) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"the top level must be a mapping of keys, got {type(data).__name__}", source=str(path))
    parent = data.pop("extends", None)
    if parent is not None:
        if not isinstance(parent, str):
            raise InputError("must be a path to a base scenario file", field="extends", source=str(path))
        base = _read_yaml((path.parent / parent).resolve(), chain + (path,))
        data = _deep_merge(base, data)
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a","b","c"], YAML-parsed value)."""
    if "=" not in text:
        raise InputError(f"override '{text}' must look like key.path=value", field="--set")
    key, _, raw = text.partition("=")
    if not key.strip():
        raise InputError(f"override '{text}' has an empty key", field="--set")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    data = dict(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            nxt = node.get(k)
            if not isinstance(nxt, dict):
                nxt = {}
            node[k] = dict(nxt)
            node = node[k]
        node[keys[-1]] = value
    return data


def format_validation_error(exc: ValidationError, source: str | None) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(top level)"
        msg = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            msg = "unknown key (check the spelling; see docs/scenarios.md for the keys)"
        elif err.get("type") == "missing":
            msg = "required key is missing"
        inp = err.get("input")
        got = "" if err.get("type") in ("missing", "extra_forbidden") else f" (got {inp!r})"
        lines.append(f"  {loc}: {msg}{got}")
    head = f"{source}: invalid scenario" if source else "invalid scenario"
    return head + "\n" + "\n".join(lines)


class ScenarioError(InputError):
    def __init__(self, text: str):
        ValueError.__init__(self, text)
        self.field = None
        self.source = None


def scenario_from_dict(data: dict, source: str | None = None) -> Scenario:
    try:
        sc = Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(format_validation_error(exc, source)) from None
    if source:
        sc.source_path = str(source)
    return sc


def load_scenario(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = (), *,
                  check_files: bool = True) -> Scenario:
    """Read, merge (``extends``), override (``key.path=value``) and validate a scenario file.

    With ``check_files`` (the default) the map and every other file the scenario names are
    checked to exist, so a run never starts on a missing file.
    """
    path = Path(path)
    data = _read_yaml(path.resolve())
    data = apply_overrides(data, list(overrides))
    sc = scenario_from_dict(data, str(path))
    if check_files:
        sc.resolved_map_path()
    return sc


def dump_scenario(sc: Scenario) -> str:
    return yaml.safe_dump(sc.model_dump(mode="json"), sort_keys=False)
