"""absl flags generated from a config dataclass, so an entry point never copies its fields.

    SETTINGS = config_flags.define_flags(SparcTextConfig, names={"num_sentences": "sentences"})
    ...
    config = SETTINGS.build()  # the dataclass, with the flags given on the command line

:func:`define_flags` defines one flag per dataclass field: its type from the field's annotation
(``bool``, ``int``, ``float``, ``str``, a ``Literal`` of strings as an enum, a
``tuple[X, ...]`` as a comma-separated list, each optionally ``| None``), its help from the
docstring written under the field, its default from the dataclass. :meth:`ConfigFlags.build`
builds the dataclass back, overriding only the fields whose flags were set, so the dataclass's
own defaults and its ``__post_init__`` validation stay the one source of truth: a bad value
fails with the dataclass's error, which names the field and the value.

:func:`define_named_paths` defines the one flag shape several entry points share that no
dataclass holds: ``--npy=name=path.npy,name=path.npy``, parsed into ``{name: path}``.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Collection, Mapping
from typing import Any

from absl import flags
from absl.flags import _helpers

# The flags belong to the module that calls define_flags (absl's own DEFINE_* functions disclaim
# their module the same way), so that module's --help lists them with its other flags.
_helpers.disclaim_module_ids.add(id(sys.modules[__name__]))

_SCALARS: dict[type, Callable] = {
    bool: flags.DEFINE_boolean,
    int: flags.DEFINE_integer,
    float: flags.DEFINE_float,
    str: flags.DEFINE_string,
}


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring written under it in the class body (whitespace collapsed),
    for ``cls`` and its dataclass bases; fields without one are absent."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, after in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _without_none(annotation) -> tuple[Any, bool]:
    """``(X, True)`` for ``X | None`` (or ``Optional[X]``), else ``(annotation, False)``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _tuple_item(annotation) -> type | None:
    """``X`` of ``tuple[X, ...]`` when X is a scalar flag type, else None."""
    if typing.get_origin(annotation) is tuple:
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis and args[0] in (int, float, str):
            return args[0]
    return None


@dataclasses.dataclass(frozen=True)
class ConfigFlags:
    """The flags :func:`define_flags` made for one dataclass, and the way back to it."""

    cls: type
    """The config dataclass."""
    flag_names: Mapping[str, str]
    """Field name -> its flag's name."""
    converters: Mapping[str, Callable[[Any], Any]]
    """Field name -> the function turning the flag's value into the field's (lists to tuples)."""
    flag_values: flags.FlagValues
    """Where the flags live (``flags.FLAGS`` unless a test passes its own)."""

    def overrides(self) -> dict[str, Any]:
        """Field name -> value for every flag set on the command line (or assigned)."""
        out = {}
        for field, name in self.flag_names.items():
            flag = self.flag_values[name]
            if flag.present or flag.value != flag.default:
                out[field] = self.converters[field](flag.value)
        return out

    def build(self, **fixed) -> Any:
        """The dataclass from its defaults, the flags that were set and ``fixed`` (fields the
        entry point decides itself). Raises the dataclass's ``ValueError`` on a bad value."""
        return self.cls(**{**self.overrides(), **fixed})


def define_flags(
    cls: type,
    *,
    names: Mapping[str, str] | None = None,
    skip: Collection[str] = (),
    flag_values: flags.FlagValues = flags.FLAGS,
) -> ConfigFlags:
    """Define one absl flag per field of the dataclass ``cls``.

    Args:
      cls: a dataclass whose fields have docstrings and flag-friendly annotations.
      names: field name -> flag name where they differ (default: the field's name).
      skip: fields that get no flag (the entry point sets them, or they are not flag values).
      flag_values: the registry to define the flags in.

    Returns:
      A :class:`ConfigFlags` whose ``build()`` makes ``cls`` from the parsed flags.

    Raises:
      TypeError: ``cls`` is not a dataclass, or a field's annotation has no flag type (the
        message names the field; pass it in ``skip``).
      KeyError: ``names`` or ``skip`` name a field ``cls`` does not have.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    names = dict(names or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = (set(names) | set(skip)) - set(fields)
    if unknown:
        raise KeyError(f"{cls.__name__} has no fields {sorted(unknown)}")
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    flag_names, converters = {}, {}
    for name, field in fields.items():
        if name in skip:
            continue
        flag = names.get(name, name)
        annotation, _ = _without_none(hints[name])
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = None
        help_text = docs.get(name, f"{cls.__name__}.{name}")
        item = _tuple_item(annotation)
        convert = lambda value: value
        if typing.get_origin(annotation) is typing.Literal and all(
            isinstance(a, str) for a in typing.get_args(annotation)
        ):
            flags.DEFINE_enum(
                flag, default, list(typing.get_args(annotation)), help_text, flag_values=flag_values
            )
        elif annotation in _SCALARS:
            _SCALARS[annotation](flag, default, help_text, flag_values=flag_values)
        elif item is not None:
            listed = None if default is None else [str(v) for v in default]
            flags.DEFINE_list(flag, listed, help_text, flag_values=flag_values)
            convert = lambda value, item=item: None if value is None else tuple(map(item, value))
        else:
            raise TypeError(
                f"{cls.__name__}.{name}: no flag type for {hints[name]!r}; pass it in skip"
            )
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            flags.mark_flag_as_required(flag, flag_values=flag_values)
        flag_names[name], converters[name] = flag, convert
    return ConfigFlags(cls, flag_names, converters, flag_values)


class NamedPathsParser(flags.ListParser):
    """Parses ``name=path,name=path`` into ``{name: path}``, in order.

    An entry without ``=``, with an empty name or path, or a name given twice is refused when the
    command line is parsed, with a message that names the entry."""

    def __init__(self):
        super().__init__()
        self.syntactic_help = "a comma separated list of name=path"

    def parse(self, argument) -> dict[str, str]:
        if isinstance(argument, Mapping):
            return dict(argument)
        named: dict[str, str] = {}
        for item in super().parse(argument):
            name, equals, path = item.partition("=")
            if not equals or not name.strip() or not path.strip():
                raise ValueError(f"{item!r} is not name=path")
            if name in named:
                raise ValueError(f"model {name!r} is given twice")
            named[name] = path
        return named

    def flag_type(self) -> str:
        return "comma separated name=path list"


class NamedPathsSerializer(flags.ArgumentSerializer):
    """``{name: path}`` -> ``name=path,name=path`` (for flag files)."""

    def serialize(self, value) -> str:
        return ",".join(f"{name}={path}" for name, path in value.items())


def define_named_paths(
    name: str, help_text: str, flag_values: flags.FlagValues = flags.FLAGS
) -> flags.FlagHolder:
    """Define ``--name=a=x.npy,b=y.npy`` (default: empty); its value is ``{"a": "x.npy", "b":
    "y.npy"}``. A malformed entry or a repeated name fails at parsing with the entry named."""
    return flags.DEFINE(
        NamedPathsParser(),
        name,
        "",
        help_text,
        flag_values=flag_values,
        serializer=NamedPathsSerializer(),
    )
