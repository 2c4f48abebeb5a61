"""Config dataclasses and the command-line flags, stored provenance and run identity made from them.

A config is a dataclass deriving from `Config` whose fields are declared with `option`: each field's
``help`` (with units) becomes its ``--flag``'s help, its default the flag's default, its ``choices`` the
flag's choices. `add_arguments` adds one flag per field, `from_args` builds the config back; `Config`
turns a config into a dict, canonical JSON, result attrs, command-line flags and a short hash, and back.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import json
import math
import textwrap
import typing
from dataclasses import field, fields
from typing import Any, TypeVar

_R = TypeVar("_R")


class RunError(RuntimeError):
    """A run cannot go on (e.g. the loss became NaN); completed checkpoints are kept."""


def option(
    default: Any,
    help: str,
    choices: tuple | None = None,
    names: str | None = None,
    check: str | None = None,
    parse: typing.Callable[[str], Any] | None = None,
    metavar: str | None = None,
    **kw: Any,
) -> Any:
    """A config field: ``help`` (with units), ``choices``, ``names`` ("models", "datasets" or "probes":
    the field takes registered names, listed in the CLI help), ``check`` (validated on construction:
    "positive", "non_negative", "fraction" (in [0, 1]) or "size" (positive, and no number in it, nested
    ones included, above `MAX_SIZE`); None passes where it is the default), ``parse`` (the flag's
    converter from text, raising argparse.ArgumentTypeError with the fix; with ``metavar``, for values
    the type alone cannot read)."""
    meta = {"help": help, "choices": choices, "names": names, "check": check, "parse": parse, "metavar": metavar}
    if isinstance(default, (list, dict, tuple)):
        return field(default_factory=lambda: type(default)(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


_f = option


class Config:
    """Shared behaviour of the config dataclasses: validation on construction, dict/JSON/attrs/flags
    round trips, a content hash and the names of the fields two configs disagree on."""

    def __post_init__(self) -> None:
        from distill.registry import canonical_dataset

        for f in fields(self):  # type: ignore[arg-type]
            # dataset names are stored as spelled canonically, so that an alias resumes the same run
            if f.metadata.get("names") == "datasets" and isinstance(getattr(self, f.name), str):
                setattr(self, f.name, canonical_dataset(getattr(self, f.name)))
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (nested configs and lists copied)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): what results store as their ``recipe`` attr."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        """Rebuild a config from `to_dict` output, ignoring unknown keys of newer versions."""
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_attrs(cls, attrs: typing.Mapping[str, Any]) -> Any:
        """The config recorded in a result's or store's attrs (their ``recipe``, canonical JSON)."""
        if "recipe" not in attrs:
            raise ValueError(f"these attrs record no recipe: they were not written from a {cls.__name__}")
        return cls.from_dict(json.loads(attrs["recipe"]))

    @property
    def config_hash(self) -> str:
        """10 hex digits of the SHA-256 of `to_json`: equal configs, equal hash."""
        from distill.provenance import config_hash

        return config_hash(self.to_json())

    def differing_fields(self, other: Any) -> list[str]:
        """The names of the fields whose values differ between this config and ``other`` (a config or
        its dict); fields ``other`` lacks count as differing."""
        theirs = other.to_dict() if hasattr(other, "to_dict") else dict(other)
        mine = json.loads(self.to_json())
        return [k for k in mine if k not in theirs or json.loads(json.dumps(theirs[k], default=str)) != mine[k]]

    def to_argv(self, prefix: str = "") -> list[str]:
        """Command-line flags that rebuild this config through `add_arguments` / `from_args`:
        ``--flag=value`` (a value may begin with "-"), a nested config as JSON, ``none`` for None
        where the default is not."""
        out = []
        for f in fields(self):  # type: ignore[arg-type]
            value, flag = getattr(self, f.name), "--" + prefix + f.name.replace("_", "-")
            if isinstance(value, bool):
                out.append(flag if value else "--no-" + flag[2:])
            elif isinstance(value, Config):
                out.append(f"{flag}={value.to_json()}")
            elif value is not None or _default(f) is not None:
                out.append(f"{flag}={'none' if value is None else _show(value)}")
        return out

    def replace(self, **changes: Any) -> Any:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    @classmethod
    def _from_flags(cls, values: dict[str, Any]) -> Any:
        """The config from parsed flag values (a subclass may adjust them first)."""
        return cls(**values)


MAX_SIZE = 1 << 24  # no layer size (out_dim, widths in arch_options, ...) is larger; the store bounds specs alike


def _check_sizes(name: str, v: Any, depth: int = 0) -> None:
    """A one-line ValueError when a size in ``v`` (a number, or one nested in lists and dicts) exceeds
    `MAX_SIZE`: a layer that large would need absurd memory, and is refused before any is allocated."""
    if depth > 6:
        raise ValueError(f"{name} nests too deeply: pass a flat JSON object of options")
    if isinstance(v, bool):
        return
    if isinstance(v, (int, float)) and abs(v) > MAX_SIZE:
        raise ValueError(
            f"{name}={v!r} is too large (at most {MAX_SIZE}): a layer of that size would need absurd memory; "
            "choose a smaller value"
        )
    if isinstance(v, (list, tuple)):
        for i, x in enumerate(v):
            _check_sizes(f"{name}[{i}]", x, depth + 1)
    elif isinstance(v, dict):
        for k, x in v.items():
            _check_sizes(f"{name}.{k}", x, depth + 1)


def _check_field(f: dataclasses.Field, v: Any) -> None:
    """The field's own ``check`` (see `option`); None passes where it is the field's default."""
    check = f.metadata.get("check")
    if check == "size":
        _check_sizes(f.name, v)
    if check is None or (v is None and f.default is None) or isinstance(v, dict):
        return
    if check in ("positive", "size") and (v is None or v <= 0):
        raise ValueError(f"{f.name}={v!r} must be a positive number")
    if check == "non_negative" and v is not None and v < 0:
        raise ValueError(f"{f.name}={v!r} must be >= 0")
    if check == "fraction" and not 0.0 <= v <= 1.0:
        raise ValueError(f"{f.name}={v!r} must lie in [0, 1]")


def validate(cfg: Any) -> None:
    """Check ranges and choices; raise ValueError with one line naming the field and the fix."""
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{f.name}={v!r} must be a finite number")
        choices = f.metadata.get("choices")
        if choices and v not in choices:
            raise ValueError(f"{f.name}={v!r} is not valid: choose one of {', '.join(map(str, choices))}")
        _check_field(f, v)
        if f.metadata.get("names") == "probes" and isinstance(v, (list, tuple)):
            _check_probes(v)


def _unknown_probes(probes: Any) -> tuple[list, list[str]]:
    """(the names in ``probes`` no probe is registered under, the registered names), after loading
    installed plugins when a name is not found at first."""
    from distill import registry

    known = registry.probe_names()
    if any(p not in known for p in probes):
        from distill.plugins import load_entry_points

        load_entry_points()  # an installed plugin may register them
        known = registry.probe_names()
    return [p for p in probes if p not in known], known


def _check_probes(probes: Any) -> None:
    unknown, known = _unknown_probes(probes)
    if unknown:
        raise ValueError(
            f"probes: unknown probe(s) {', '.join(map(str, unknown))}; choose from {', '.join(known)} "
            "(register more with distill.register_probe, or load a plugin with --plugin MODULE)"
        )


# ---------------------------------------------------------------------- CLI from dataclasses
def _base_type(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) is typing.Union and args else tp


class _Switch(argparse.BooleanOptionalAction):
    """``--flag`` / ``--no-flag``, with the help exactly as given (Python < 3.13 appends its own
    "(default: ...)", which would repeat ours)."""

    def __init__(self, *args: Any, help: str | None = None, **kw: Any) -> None:
        super().__init__(*args, help=help, **kw)
        self.help = help


def _named(name: str, fn: Any) -> Any:
    fn.__name__ = name  # argparse names the converter in its messages
    return fn


def _int_value(text: str) -> int:
    try:
        return int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (write e.g. 10000, not 10k)") from None


def _float_value(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (write e.g. 0.001 or 1e-3)") from None


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not valid JSON ({e.msg} at character {e.pos}); write an "
            "object in single quotes, e.g. '{\"width\": 64}'"
        ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object: write e.g. '{{\"width\": 64}}'")
    return value


def _list_value(text: str) -> list:
    """A comma-separated list; ``none`` is the empty list. An empty text is refused: it is what a
    shell leaves of an unset variable, so it more often hides a mistake than means "nothing"."""
    if text.strip().lower() == "none":
        return []
    out = _parse_list(text)
    if not out:
        raise argparse.ArgumentTypeError(f"{text!r} lists nothing: write 'none' for an empty list, or e.g. A,B")
    return out


_CONVERTERS = {int: _named("int", _int_value), float: _named("float", _float_value)}


def registered_name(kind: str) -> Any:
    """An argparse ``type`` for a flag naming a registered model or dataset (``kind``: "models" or
    "datasets"): an unknown name is a usage error with the closest registered name suggested;
    dataset aliases come back in their canonical spelling."""
    noun = {"models": "architecture", "datasets": "dataset"}[kind]

    def convert(text: str) -> str:
        from distill import registry

        value = registry.canonical_dataset(text) if kind == "datasets" else text.strip()
        known = _registered(kind)
        if value not in known:
            raise argparse.ArgumentTypeError(
                f"unknown {noun} {text!r}{registry.suggest(value, known)}; registered: {', '.join(known)}"
            )
        return value

    return _named(noun, convert)


def _probe_list(text: str) -> list:
    """``--probes``: a comma-separated list of registered probe names (``none``: no probes); an unknown
    name is a usage error with the closest registered name suggested."""
    from distill import registry

    out = _list_value(text)
    unknown, known = _unknown_probes(out)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown probe {unknown[0]!r}{registry.suggest(str(unknown[0]), known)}; registered: {', '.join(known)}"
        )
    return out


def _registered(kind: str) -> list[str]:
    from distill import registry

    return {"models": registry.model_names, "datasets": registry.dataset_names, "probes": registry.probe_names}[kind]()


def _show(value: Any) -> str:
    """A default as it is written on the command line."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) if value else "none"
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def add_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    prefix: str = "",
    skip: tuple[str, ...] = (),
    defaults_text: dict[str, str] | None = None,
) -> None:
    """Add one ``--flag`` per dataclass field of ``cls`` (defaults and help from the field).

    The help names the default as written on the command line (lists comma-separated, dicts as
    JSON, booleans on/off; no default shown for None, whose meaning the field's help states), the
    choices, and the registered names for fields that take a model, dataset or probe name.
    ``defaults_text`` replaces the shown default of some fields (e.g. one value per preset).
    """
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name in skip:
            continue
        tp = _base_type(hints[f.name])
        flag = "--" + prefix + f.name.replace("_", "-")
        factory: Any = f.default_factory
        default = f.default if f.default is not dataclasses.MISSING else factory()
        help = f.metadata.get("help", "")
        names = f.metadata.get("names")
        if names:
            help += f" (registered: {', '.join(_registered(names))})"
        shown = (defaults_text or {}).get(f.name)
        if shown is None and default is not None:
            shown = _show(default)
        if shown is not None:
            help += f" (default: {shown})"
        kw: dict[str, Any] = {
            "dest": prefix.replace("-", "_") + f.name,
            "default": default,
            "help": help.replace("%", "%%"),
        }
        if f.metadata.get("parse"):
            kw["type"] = f.metadata["parse"]
            kw["metavar"] = f.metadata.get("metavar") or "VALUE"
        elif tp is bool:
            kw["action"] = _Switch
        elif tp in (list, tuple):
            kw["type"] = _named("probes", _probe_list) if names == "probes" else _named("list", _list_value)
            kw["metavar"] = "A,B,..."
        elif tp is dict:
            kw["type"] = _named("JSON", _json_object)
            kw["metavar"] = "JSON"
        elif names in ("models", "datasets") and tp is str:
            kw["type"] = registered_name(names)
            kw["metavar"] = "NAME"
        else:
            kw["type"] = _CONVERTERS.get(tp, tp)
            if f.metadata.get("choices"):
                kw["choices"] = f.metadata["choices"]
            else:
                kw["metavar"] = {int: "N", float: "X"}.get(
                    tp, "NAME" if names else "PATH" if f.name.endswith(("root", "dir", "path")) else "TEXT"
                )
        parser.add_argument(flag, **kw)


def from_args(cls: type, ns: argparse.Namespace, prefix: str = "", **overrides: Any) -> Any:
    """Build ``cls`` from parsed arguments made by `add_arguments`."""
    dest = prefix.replace("-", "_")
    vals = {f.name: getattr(ns, dest + f.name) for f in fields(cls) if hasattr(ns, dest + f.name)}
    return cls._from_flags({**vals, **overrides})  # type: ignore[attr-defined]


def _parse_list(s: str) -> list:
    out: list = []
    for item in s.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            out.append(int(item))
        except ValueError:
            try:
                out.append(float(item))
            except ValueError:
                out.append(item)
    return out


def with_config(cls: type) -> typing.Callable[[typing.Callable[..., _R]], typing.Callable[..., _R]]:
    """Let a function taking ``config`` (an instance of ``cls``) also take each of the config's fields as a
    keyword argument, so that ``f(x, alphas=11)`` and ``f(x, config=PathConfig(alphas=11))`` are the same
    call, and the config class stays the one source of the defaults and of the settings' documentation.
    Keywords given beside ``config`` replace its fields. A function that declares no ``config`` parameter
    gets the fields as keyword arguments instead (declare them keyword-only without defaults). The
    wrapper's signature lists the fields, and its docstring is the function's followed by a section
    describing each field (help, type, default), so ``help(f)`` shows them."""
    names = [f.name for f in fields(cls)]

    def deco(fn: typing.Callable[..., _R]) -> typing.Callable[..., _R]:
        inner = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, config: Any = None, **kw: Any) -> _R:
            settings = {k: kw.pop(k) for k in list(kw) if k in names}
            if config is None:
                config = cls(**settings)
            elif not isinstance(config, cls):
                raise TypeError(f"config must be a {cls.__name__}, not {type(config).__name__}")
            elif settings:
                config = config.replace(**settings)  # type: ignore[attr-defined]
            if spread:
                return fn(*args, **{n: getattr(config, n) for n in names}, **kw)
            return fn(*args, config=config, **kw)

        spread = "config" not in inner.parameters
        own = [p for p in inner.parameters.values() if p.name != "config" and p.name not in names]
        head = [p for p in own if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
        tail = [p for p in own if p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD)]
        hints = typing.get_type_hints(cls)
        settings = [
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=_default(f), annotation=hints[f.name])
            for f in fields(cls)
        ]
        config_param = inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=cls)
        wrapper.__signature__ = inner.replace(parameters=[*head, config_param, *settings, *tail])  # type: ignore[attr-defined]
        wrapper.__doc__ = inspect.cleandoc(fn.__doc__ or "") + "\n\n" + settings_doc(cls)
        return wrapper

    return deco


def settings_doc(cls: type) -> str:
    """A docstring section (Google style) describing each field of the config class ``cls``: its help
    (with units), type and default (none shown for None, whose meaning the help states)."""
    hints = typing.get_type_hints(cls)
    lines = [f"Keyword Args: Settings (or pass them together as config={cls.__name__}(...))"]
    for f in fields(cls):
        default = _default(f)
        text = f"{f.name} ({_type_text(hints[f.name])}): {f.metadata.get('help', '')}"
        if default is not None:
            text += f" (default: {type(default).__name__ + '()' if isinstance(default, Config) else repr(default)})"
        lines.append(textwrap.fill(text, 110, initial_indent="    ", subsequent_indent="        "))
    return "\n".join(lines)


def _type_text(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Union:
        return " | ".join(map(_type_text, typing.get_args(tp)))
    return "None" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc,operator]
