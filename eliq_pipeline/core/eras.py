"""The era registry (`eras.yaml`): a catalog of generators and the eras that use them.

Over 400 lines: the whole eras.yaml schema and its validation messages, kept together so every rule is in one place.

Parsed and validated up front so a typo fails before any generation or training starts,
with a message naming the era and the key. Two layers:

  * `parse_eras` (every load): structure, types, seed ranges, generator `params` keys and value
    types, `tiny:` architectures per role -- everything that does not depend on the profile or
    on the machine;
  * `check_runnable(registry, profile, eras)` (before materializing): every generator an era uses
    has a model for the active profile, and `import` sources (folder or `s3://` manifest) exist.

A generator's `model` may name `${NAME}`: `load_eras(path, variables)` replaces it by
variables[NAME] (the callers pass the ELIQ_* environment variables, `eras_variables()`); an unset
NAME is an `ErasFileError` saying which variable to set.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Mapping

import yaml

from eliq_pipeline.core import profiles
from eliq_pipeline.core.atomic import write_text

PROFILES = tuple(profiles.PROFILES)  # the profiles a model mapping may name
OFFLINE_EDITOR = "offline"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# `${NAME}` in a generator's model: replaced by the variable NAME (the ELIQ_* environment variables)
_VARIABLE_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

# Era seeds (and generator `seed` / `init_seed` params) must lie in [0, SEED_MAX]. The tightest use:
# the LoRA sample order seeds torch.Generator with `seed * 1_000_003 + epoch` and torch takes at
# most 2**64 - 1, so seeds above ~1.8e13 overflow ("Overflow when unpacking long long") deep in
# tuned_mllm; tiny builders seed torch with `init_seed + k`, numpy's default_rng refuses negative
# seeds. 32 bits is the conventional seed range and leaves every such use far from its limit.
SEED_MAX = 2**32 - 1


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


def _fail(path: Path, where: str, message: str) -> ErasFileError:
    return ErasFileError(f"{path}: {where}: {message}")


def _expect(path: Path, where: str, value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise _fail(path, where, f"{what} must be an integer, got {type(value).__name__} {value!r}")
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise _fail(path, where, f"{what} must be {names}, got {type(value).__name__} {value!r}")
    return value


def _expect_seed(path: Path, where: str, value: Any, what: str) -> int:
    _expect(path, where, value, int, what)
    if not 0 <= value <= SEED_MAX:
        raise _fail(path, where, f"{what} must be in 0..{SEED_MAX} (2**32 - 1), got {value}")
    return value


@functools.cache
def _ml_rules() -> SimpleNamespace:
    """What the generator, editor and import backends accept, from the code that builds them
    (imported lazily: these modules pull in torch)."""
    from eliq_pipeline import tiny
    from eliq_pipeline.supervision import backends, generators, import_backend

    def dtype_ok(value: str) -> bool:
        try:
            generators._resolve_dtype("cpu", value)
        except ValueError:
            return False
        return True

    return SimpleNamespace(
        tiny_prefix=tiny.TINY_PREFIX,
        text_to_image_archs=tuple(tiny.TEXT_TO_IMAGE_ARCHS),
        editor_arch=tiny.EDITOR_ARCH,
        known_params=generators.KNOWN_PARAMS,
        backends=backends.GENERATOR_BACKENDS.names(),
        import_options=import_backend.IMPORT_OPTIONS,
        on_duplicate=import_backend.ON_DUPLICATE,
        default_manifest=import_backend.DEFAULT_MANIFEST,
        inside_import_folder=import_backend.lexically_inside,
        dtype_ok=dtype_ok,
    )


def _positive_int(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return "a positive integer"
    return None


def _number(value: Any) -> str | None:
    return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"


def _of(kind: type, name: str) -> Callable[[Any], str | None]:
    return lambda value: None if isinstance(value, kind) else name


def _seed_value(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        return f"an integer in 0..{SEED_MAX}"
    return None


def _one_of(choices: tuple[str, ...]) -> str:
    quoted = [repr(choice) for choice in choices]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]


# Value rules for known generator params (the keys themselves come from generators.KNOWN_PARAMS;
# a known key without a rule here is accepted as is).
PARAM_RULES: dict[str, Callable[[Any], str | None]] = {
    "steps": _positive_int,
    "guidance": _number,
    "height": _positive_int,
    "width": _positive_int,
    "seed": _seed_value,
    "init_seed": _seed_value,
    "negative_prompt": _of(str, "a string"),
    "max_sequence_length": _positive_int,
    "batch_size": _positive_int,
    "dtype": lambda v: None if isinstance(v, str) and _ml_rules().dtype_ok(v) else "float32, bfloat16 or float16",
    "revision": _of(str, "a string"),
    "offload": _of(bool, "true or false"),
    "call_kwargs": _of(dict, "a mapping"),
}
# Value rules for the import backend's options (its `call_kwargs`; keys from import_backend.IMPORT_OPTIONS).
IMPORT_OPTION_RULES: dict[str, Callable[[Any], str | None]] = {
    "manifest": _of(str, "a string"),
    "endpoint_url": _of(str, "a string"),
    "min_side": _positive_int,
    "max_pixels": _positive_int,
    "on_duplicate": lambda v: None if v in _ml_rules().on_duplicate else _one_of(_ml_rules().on_duplicate),
    "strict": _of(bool, "true or false"),
}


def _check_options(path: Path, where: str, gid: str, what: str, options: dict[str, Any], known: set[str] | frozenset[str],
                   rules: dict[str, Any]) -> None:
    """Unknown keys of a params / call_kwargs mapping, then each known key's value rule."""
    unknown = sorted(set(options) - set(known), key=str)
    if unknown:
        raise _fail(path, where, f"generator {gid!r}: unknown {what}(s) {unknown}; known: {', '.join(sorted(known))}")
    for key, value in options.items():
        wanted = rules.get(key, lambda _v: None)(value)
        if wanted:
            raise _fail(path, f"{where}.{key}", f"generator {gid!r}: {key} must be {wanted}, "
                                                f"got {type(value).__name__} {value!r}")


def _check_params(path: Path, gid: str, backend: str, params: dict[str, Any]) -> None:
    rules = _ml_rules()
    where = f"generators.{gid}.params"
    _check_options(path, where, gid, "param", params, rules.known_params, PARAM_RULES)
    if backend == "import":
        _check_options(path, f"{where}.call_kwargs", gid, "import option", params.get("call_kwargs") or {},
                       rules.import_options, IMPORT_OPTION_RULES)


def _tiny_arch(model: str) -> str | None:
    prefix = _ml_rules().tiny_prefix
    return model[len(prefix):] if model.startswith(prefix) else None


def _tiny_choices() -> str:
    rules = _ml_rules()
    archs = ", ".join(rules.tiny_prefix + a for a in rules.text_to_image_archs)
    return f"{archs} (text-to-image), {rules.tiny_prefix}{rules.editor_arch} (editor)"


def _check_models(path: Path, gid: str, backend: str, model: dict[str, str]) -> None:
    rules = _ml_rules()
    for profile, value in model.items():
        where = f"generators.{gid}.model.{profile}"
        arch = _tiny_arch(value)
        if arch is None:
            if not value.strip():
                raise _fail(path, where, f"generator {gid!r}: empty model for profile {profile!r}")
            continue
        if backend == "import":
            raise _fail(path, where, f"generator {gid!r}: backend 'import' takes a folder or s3://bucket/prefix, "
                                     f"not {value!r}")
        if arch not in rules.text_to_image_archs and arch != rules.editor_arch:
            raise _fail(path, where, f"generator {gid!r}, profile {profile!r}: unknown tiny architecture {value!r}; "
                                     f"known: {_tiny_choices()}")


def _check_roles(path: Path, era: Era, catalog: dict[str, GeneratorEntry]) -> None:
    """A generator used for text-to-image must be one; an editor must take an input image."""
    rules = _ml_rules()
    where = f"era {era.name!r}"
    for role in ("positive_generators", "low_quality_generators"):
        for gid in getattr(era, role):
            for profile, value in catalog[gid].model.items():
                if _tiny_arch(value) == rules.editor_arch:
                    raise _fail(path, f"{where}.{role}", f"generator {gid!r}, profile {profile!r}: {value!r} is an "
                                                         f"editor, not a text-to-image model")
    for profile, gid in era.editor.items():
        if gid == OFFLINE_EDITOR:
            continue
        entry = catalog[gid]
        if entry.backend != "diffusers":
            raise _fail(path, f"{where}.editor", f"profile {profile!r}: editor {gid!r} has backend {entry.backend!r}; "
                                                 "an editor needs backend 'diffusers'")
        value = entry.model.get(profile)
        arch = _tiny_arch(value) if value is not None else None
        if arch is not None and arch != rules.editor_arch:
            raise _fail(path, f"{where}.editor", f"editor {gid!r}, profile {profile!r}: {value!r} is a text-to-image "
                                                 f"model; the tiny editor is {rules.tiny_prefix}{rules.editor_arch}")


def _substitute(path: Path, where: str, gid: str, value: str, variables: Mapping[str, str]) -> str:
    """`value` with every `${NAME}` replaced by variables[NAME]; an unset NAME is an error saying to set it."""
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in variables:
            raise _fail(path, where, f"generator {gid!r}: variable ${{{name}}} is not set; set it "
                                     f"(export {name}=<folder>) before loading the eras file")
        return str(variables[name])

    return _VARIABLE_RE.sub(replace, value)


def _parse_generator(path: Path, gid: Any, raw: Any, variables: Mapping[str, str] | None = None) -> GeneratorEntry:
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
    backends = _ml_rules().backends
    if backend not in backends:
        raise _fail(path, f"{where}.backend", f"unknown backend {backend!r}; known: {', '.join(backends)}")
    model_raw = raw["model"]
    variables = variables or {}
    if isinstance(model_raw, str):
        value = _substitute(path, f"{where}.model", gid, model_raw, variables)
        model = {profile: value for profile in PROFILES}
    else:
        _expect(path, f"{where}.model", model_raw, dict, "model (a string or a mapping profile -> model)")
        bad = set(model_raw) - set(PROFILES)
        if bad:
            raise _fail(path, f"{where}.model", f"unknown profile(s) {sorted(bad)}; known: {', '.join(PROFILES)}")
        model = {}
        for profile, value in model_raw.items():
            value = _expect(path, f"{where}.model.{profile}", value, str, "model")
            model[profile] = _substitute(path, f"{where}.model.{profile}", gid, value, variables)
    params = _expect(path, f"{where}.params", raw.get("params", {}) or {}, dict, "params")
    _check_models(path, gid, backend, model)
    _check_params(path, gid, backend, params)
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
    seed = _expect_seed(path, f"{where}.seed", raw["seed"], "seed")
    era = Era(name, positives, low_quality, editor, seed)
    _check_roles(path, era, catalog)
    return era


def parse_eras(text: str, path: Path = Path("eras.yaml"), variables: Mapping[str, str] | None = None) -> EraRegistry:
    """Parse and validate an eras file's text; `${NAME}` in a generator's model is replaced by
    variables[NAME] (an unset NAME is an `ErasFileError`)."""
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
    catalog = {gid: _parse_generator(path, gid, entry, variables) for gid, entry in raw["generators"].items()}
    _expect(path, "eras", raw["eras"], list, "eras (a list)")
    eras: list[Era] = []
    for index, entry in enumerate(raw["eras"]):
        era = _parse_era(path, index, entry, catalog)
        if any(existing.name == era.name for existing in eras):
            raise _fail(path, f"eras[{index}].name", f"duplicate era name {era.name!r}")
        eras.append(era)
    return EraRegistry(path=path, generators=catalog, eras=tuple(eras))


# Parts of a variable name that mark a secret: such ELIQ_* variables are never put into the eras
# resource's config (which the UI's resource page and run snapshots show).
_SECRET_NAME_PARTS = ("KEY", "SECRET", "TOKEN", "PASSWORD", "CREDENTIAL")


def eras_variables(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables an eras file's `${NAME}` references may use: every ELIQ_* environment
    variable, except secrets (a name containing KEY, SECRET, TOKEN, PASSWORD or CREDENTIAL)."""
    env = os.environ if env is None else env
    return {name: value for name, value in env.items()
            if name.startswith("ELIQ_") and not any(part in name.upper() for part in _SECRET_NAME_PARTS)}


def load_eras(path: str | Path, variables: Mapping[str, str] | None = None) -> EraRegistry:
    """The era registry in `path`; `variables` fill the `${NAME}` references of generator models
    (callers pass the ELIQ_* environment variables)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ErasFileError(f"{path}: era registry not found (set ELIQ_ERAS or run from the project root)") from None
    except UnicodeDecodeError as exc:
        raise ErasFileError(f"{path}: not UTF-8 text: {exc}") from exc
    return parse_eras(text, path, variables)


def append_era(path: str | Path, name: str, like: str, positive_generators: list[str] | None = None,
               profile: str | None = None, s3_endpoint: str | None = None,
               variables: Mapping[str, str] | None = None) -> Era:
    """Append an era copied from `like` (optionally with other positives); validates before writing,
    and with `profile` also checks that the new era can run on it (`check_runnable`). `variables`
    as for `load_eras`; the file keeps its `${NAME}` references."""
    path = Path(path)
    registry = load_eras(path, variables)
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
    new_registry = parse_eras(new_text, path, variables)  # raises (naming the key) before anything is written
    if profile is not None:
        check_runnable(new_registry, profile, [name], s3_endpoint)
    write_text(path, new_text)
    return new_registry.era(name)


def check_runnable(registry: EraRegistry, profile: str, era_names: list[str] | None = None,
                   s3_endpoint: str | None = None) -> None:
    """Raise ErasFileError (naming the file, era, generator and key) unless every era in
    `era_names` (default: all) can run on `profile`: each generator it uses -- positives,
    low-quality generators and its editor for that profile -- has a model for the profile, and
    each `import` source exists (the folder and its manifest, or the manifest object under an
    `s3://bucket/prefix`, through `s3_endpoint` unless the generator names its own `endpoint_url`).
    Cheap: reads no image and loads no model."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
    checked: set[str] = set()
    for name in (registry.names() if era_names is None else era_names):
        era = registry.era(name)
        used = [(role, gid) for role in ("positive_generators", "low_quality_generators")
                for gid in getattr(era, role)]
        if era.editor_for(profile) != OFFLINE_EDITOR:
            used.append(("editor", era.editor_for(profile)))
        for role, gid in used:
            where = f"era {name!r}.{role}"
            entry = registry.generators[gid]
            if profile not in entry.model:
                raise _fail(registry.path, where, f"generator {gid!r} has no model for profile {profile!r} "
                                                  f"(generators.{gid}.model has {', '.join(sorted(entry.model))}); "
                                                  f"add generators.{gid}.model.{profile}")
            if entry.backend == "import" and gid not in checked:
                _check_import_source(registry.path, where, entry, profile, s3_endpoint)
            checked.add(gid)


def _check_import_source(path: Path, where: str, entry: GeneratorEntry, profile: str,
                         s3_endpoint: str | None = None) -> None:
    """The import backend's source exists: as `ImportGenerator` resolves it, without reading images."""
    rules = _ml_rules()
    model = entry.model[profile]
    key = f"generators.{entry.id}.model.{profile}"
    options = entry.params.get("call_kwargs") or {}
    manifest = str(options.get("manifest", rules.default_manifest))
    if not rules.inside_import_folder(manifest):
        raise _fail(path, f"generators.{entry.id}.params.call_kwargs.manifest",
                    f"manifest {manifest!r} escapes the import folder; give a path inside {model}")
    if model.startswith("s3://"):
        bucket, _, prefix = model[len("s3://"):].partition("/")
        if not bucket:
            raise _fail(path, where, f"generator {entry.id!r}: {key} {model!r} names no bucket")
        prefix = prefix.strip("/")
        object_key = f"{prefix}/{manifest}" if prefix else manifest
        location = f"s3://{bucket}/{object_key}"
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError

        endpoint = options.get("endpoint_url") or s3_endpoint or None
        client = boto3.client("s3", endpoint_url=endpoint,
                              config=Config(connect_timeout=10, read_timeout=30, retries={"max_attempts": 2}))
        try:
            client.head_object(Bucket=bucket, Key=object_key)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code"))
            if code in ("404", "NoSuchKey", "NotFound"):
                raise _fail(path, where, f"generator {entry.id!r}: import manifest {location} not found "
                                         f"({key})") from None
            raise _fail(path, where, f"generator {entry.id!r}: cannot read import manifest {location} "
                                     f"({key}): {exc}") from None
        except BotoCoreError as exc:
            raise _fail(path, where, f"generator {entry.id!r}: cannot reach import manifest {location} "
                                     f"({key}): {exc}") from None
        return
    root = Path(model)
    if root.is_file():  # the manifest itself was given
        return
    if not root.is_dir():
        raise _fail(path, where, f"generator {entry.id!r}: import folder {root} does not exist ({key})")
    if not (root / manifest).is_file():
        raise _fail(path, where, f"generator {entry.id!r}: import manifest {root / manifest} not found ({key})")
