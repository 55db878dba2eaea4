"""The era registry (`eras.yaml`): a catalog of generators and the eras that use them.

Parsed and validated up front so a typo fails before any generation or training starts,
with a message naming the era and the key.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

PROFILES = ("tiny", "production")
BACKENDS = ("diffusers", "import")
OFFLINE_EDITOR = "offline"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ErasFileError(ValueError):
    """eras.yaml is malformed; the message names the file, the era and the key."""


@dataclass(frozen=True)
class GeneratorEntry:
    id: str
    backend: str
    model: dict[str, str]  # profile -> hub id, local path or "tiny:<arch>"
    params: dict[str, Any] = field(default_factory=dict)

    def model_for(self, profile: str) -> str:
        if profile not in self.model:
            raise ErasFileError(f"generator {self.id!r} has no model for profile {profile!r}")
        return self.model[profile]


@dataclass(frozen=True)
class Era:
    name: str
    positive_generators: tuple[str, ...]
    low_quality_generators: tuple[str, ...]
    editor: dict[str, str]  # profile -> "offline" or an editing generator id
    seed: int

    def editor_for(self, profile: str) -> str:
        return self.editor.get(profile, OFFLINE_EDITOR)

    def fingerprint(self, catalog: dict[str, GeneratorEntry]) -> str:
        """Hash of everything that defines this era's outputs (used to decide 'up to date')."""
        used = sorted(set(self.positive_generators) | set(self.low_quality_generators) | set(self.editor.values()))
        payload = {"era": asdict(self), "generators": {g: asdict(catalog[g]) for g in used if g in catalog}}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class EraRegistry:
    path: Path
    generators: dict[str, GeneratorEntry]
    eras: tuple[Era, ...]

    def era(self, name: str) -> Era:
        for era in self.eras:
            if era.name == name:
                return era
        raise KeyError(f"era {name!r} is not in {self.path}; known: {', '.join(self.names())}")

    def names(self) -> list[str]:
        return [era.name for era in self.eras]

    def previous_era(self, name: str) -> Era | None:
        names = self.names()
        index = names.index(name)
        return self.eras[index - 1] if index > 0 else None


def default_eras_path() -> Path:
    return Path(os.environ.get("ELIQ_ERAS", "eras.yaml"))


def _fail(path: Path, where: str, message: str) -> ErasFileError:
    return ErasFileError(f"{path}: {where}: {message}")


def _expect(path: Path, where: str, value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise _fail(path, where, f"{what} must be an integer, got {type(value).__name__} {value!r}")
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise _fail(path, where, f"{what} must be {names}, got {type(value).__name__} {value!r}")
    return value


def _parse_generator(path: Path, gid: Any, raw: Any) -> GeneratorEntry:
    where = f"generators.{gid}"
    if not isinstance(gid, str) or not _NAME_RE.match(gid):
        raise _fail(path, where, "generator id must be a short name of letters, digits, '.', '_' or '-'")
    _expect(path, where, raw, dict, "a generator")
    unknown = set(raw) - {"backend", "model", "params"}
    if unknown:
        raise _fail(path, where, f"unknown key(s) {sorted(unknown)}; allowed: backend, model, params")
    for key in ("backend", "model"):
        if key not in raw:
            raise _fail(path, where, f"missing key {key!r}")
    backend = _expect(path, f"{where}.backend", raw["backend"], str, "backend")
    if backend not in BACKENDS:
        raise _fail(path, f"{where}.backend", f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    model_raw = raw["model"]
    if isinstance(model_raw, str):
        model = {profile: model_raw for profile in PROFILES}
    else:
        _expect(path, f"{where}.model", model_raw, dict, "model (a string or a mapping profile -> model)")
        bad = set(model_raw) - set(PROFILES)
        if bad:
            raise _fail(path, f"{where}.model", f"unknown profile(s) {sorted(bad)}; known: {', '.join(PROFILES)}")
        model = {}
        for profile, value in model_raw.items():
            model[profile] = _expect(path, f"{where}.model.{profile}", value, str, "model")
    params = _expect(path, f"{where}.params", raw.get("params", {}) or {}, dict, "params")
    return GeneratorEntry(id=gid, backend=backend, model=model, params=dict(params))


def _parse_era(path: Path, index: int, raw: Any, catalog: dict[str, GeneratorEntry]) -> Era:
    where = f"eras[{index}]"
    _expect(path, where, raw, dict, "an era")
    name = raw.get("name")
    if name is None:
        raise _fail(path, where, "missing key 'name'")
    name = _expect(path, f"{where}.name", name, str, "name")
    if not _NAME_RE.match(name):
        raise _fail(path, f"{where}.name", f"era name {name!r} must be letters, digits, '.', '_' or '-'")
    where = f"era {name!r}"
    allowed = {"name", "positive_generators", "low_quality_generators", "editor", "seed"}
    unknown = set(raw) - allowed
    if unknown:
        raise _fail(path, where, f"unknown key(s) {sorted(unknown)}; allowed: {', '.join(sorted(allowed))}")
    for key in ("positive_generators", "seed"):
        if key not in raw:
            raise _fail(path, where, f"missing key {key!r}")

    def generator_list(key: str, required: bool) -> tuple[str, ...]:
        value = raw.get(key, [])
        value = _expect(path, f"{where}.{key}", value if value is not None else [], list, f"{key} (a list of generator ids)")
        if required and not value:
            raise _fail(path, f"{where}.{key}", "needs at least one generator id")
        for gid in value:
            _expect(path, f"{where}.{key}", gid, str, "generator id")
            if gid not in catalog:
                raise _fail(path, f"{where}.{key}", f"unknown generator id {gid!r}; known: {', '.join(sorted(catalog))}")
        if len(set(value)) != len(value):
            raise _fail(path, f"{where}.{key}", "lists a generator twice")
        return tuple(value)

    positives = generator_list("positive_generators", required=True)
    low_quality = generator_list("low_quality_generators", required=False)
    editor_raw = raw.get("editor", OFFLINE_EDITOR)
    if isinstance(editor_raw, dict):
        bad = set(editor_raw) - set(PROFILES)
        if bad:
            raise _fail(path, f"{where}.editor", f"unknown profile(s) {sorted(bad)}; known: {', '.join(PROFILES)}")
        editor = {p: _expect(path, f"{where}.editor.{p}", v, str, "editor") for p, v in editor_raw.items()}
    else:
        editor = {p: _expect(path, f"{where}.editor", editor_raw, str, "editor (a string or a mapping profile -> editor)")
                  for p in PROFILES}
    for value in editor.values():
        if value != OFFLINE_EDITOR and value not in catalog:
            raise _fail(path, f"{where}.editor", f"unknown editor {value!r}: use {OFFLINE_EDITOR!r} or a generator id")
    seed = _expect(path, f"{where}.seed", raw["seed"], int, "seed")
    return Era(name, positives, low_quality, editor, seed)


def parse_eras(text: str, path: Path = Path("eras.yaml")) -> EraRegistry:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ErasFileError(f"{path}: not valid YAML: {exc}") from exc
    _expect(path, "top level", raw, dict, "the document")
    for key in ("generators", "eras"):
        if key not in raw:
            raise _fail(path, "top level", f"missing key {key!r}")
    unknown = set(raw) - {"generators", "eras"}
    if unknown:
        raise _fail(path, "top level", f"unknown key(s) {sorted(unknown)}")
    _expect(path, "generators", raw["generators"], dict, "generators (a mapping id -> generator)")
    catalog = {gid: _parse_generator(path, gid, entry) for gid, entry in raw["generators"].items()}
    _expect(path, "eras", raw["eras"], list, "eras (a list)")
    eras: list[Era] = []
    for index, entry in enumerate(raw["eras"]):
        era = _parse_era(path, index, entry, catalog)
        if any(existing.name == era.name for existing in eras):
            raise _fail(path, f"eras[{index}].name", f"duplicate era name {era.name!r}")
        eras.append(era)
    return EraRegistry(path=path, generators=catalog, eras=tuple(eras))


def load_eras(path: str | Path | None = None) -> EraRegistry:
    path = Path(path) if path is not None else default_eras_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ErasFileError(f"{path}: era registry not found (set ELIQ_ERAS or run from the project root)") from None
    except UnicodeDecodeError as exc:
        raise ErasFileError(f"{path}: not UTF-8 text: {exc}") from exc
    return parse_eras(text, path)


def append_era(path: str | Path, name: str, like: str, positive_generators: list[str] | None = None) -> Era:
    """Append an era copied from `like` (optionally with other positives); validates before writing."""
    path = Path(path)
    registry = load_eras(path)
    template = registry.era(like)
    entry: dict[str, Any] = {
        "name": name,
        "positive_generators": list(positive_generators or template.positive_generators),
        "low_quality_generators": list(template.low_quality_generators),
        "editor": dict(template.editor) if len(set(template.editor.values())) > 1 else template.editor_for("tiny"),
        "seed": max(era.seed for era in registry.eras) + 1,
    }
    text = path.read_text(encoding="utf-8")
    if not text.endswith("\n"):
        text += "\n"
    addition = yaml.safe_dump([entry], sort_keys=False, default_flow_style=None)
    new_text = text + "\n".join("  " + line if line else line for line in addition.splitlines()) + "\n"
    new_registry = parse_eras(new_text, path)  # raises (naming the key) before anything is written
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(new_text, encoding="utf-8")
    os.replace(tmp, path)
    return new_registry.era(name)
