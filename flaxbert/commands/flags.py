"""Command-line flags generated from the run config dataclasses (flaxbert/recipes/configs.py).

`add_config_arguments` adds one flag per field, named, documented and typed by the field's
metadata and annotation, so a setting has the same flag, help and default in every command;
`config_from_args` builds the dataclass back from the parsed namespace. A new config field is
a new flag without touching a command.

  int / float / str       --flag N / X / VALUE (choices from the metadata)
  bool, default False     --flag sets True
  bool, default True      --flag (named by the metadata, e.g. --quiet) sets False
  bool | None             --flag sets True, the metadata's false_flag sets False (exclusive)
  tuple[str, ...]         --flag A [B ...]
  tuple[tuple[str, Any]]  --flag KEY=VALUE, repeatable (values read as JSON where they parse)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing

from flaxbert.errors import FlaxbertError

# The namespace attribute where add_config_arguments records the fields it added, so that
# config_from_args reads exactly those (other arguments may share the namespace).
FIELDS_ATTR = "config_fields"


def parse_overrides(pairs: list[str] | None) -> tuple[tuple[str, typing.Any], ...]:
  """KEY=VALUE strings -> ((key, value), ...); values parsed as JSON where they are (numbers,
  true/false), strings otherwise."""
  out = []
  for pair in pairs or ():
    key, eq, value = pair.partition("=")
    if not eq or not key.strip():
      raise FlaxbertError(f"--set {pair!r}: expected KEY=VALUE")
    try:
      parsed = json.loads(value)
    except json.JSONDecodeError:
      parsed = value
    out.append((key.strip(), parsed))
  return tuple(out)


def _without_none(hint):
  """X | None -> X; anything else unchanged."""
  if typing.get_origin(hint) in (typing.Union, types.UnionType):
    rest = [a for a in typing.get_args(hint) if a is not type(None)]
    if len(rest) == 1:
      return rest[0]
  return hint


def _is_pairs(hint) -> bool:
  """tuple[tuple[str, Any], ...]: the KEY=VALUE overrides."""
  if typing.get_origin(hint) is not tuple:
    return False
  return typing.get_origin(typing.get_args(hint)[0]) is tuple


def _help(field: dataclasses.Field, shown_default: bool) -> str:
  md = field.metadata
  text = md["help"].replace("%", "%%")  # argparse %-formats help strings
  if md["default_help"]:
    return f"{text} (default: {md['default_help'].replace('%', '%%')})"
  if shown_default:
    return f"{text} (default: %(default)s)"
  return text


def _add_flag(parser, field: dataclasses.Field, hint, required: bool) -> None:
  md = field.metadata
  flag = md["flag"] or "--" + field.name.replace("_", "-")
  names = (flag, *md["aliases"])
  kind = _without_none(hint)
  metavar = md["metavar"] or {int: "N", float: "X"}.get(kind) or \
      flag.lstrip("-").upper().replace("-", "_")
  default = None if field.default is dataclasses.MISSING else field.default
  required = required or field.default is dataclasses.MISSING
  if kind is bool:
    if field.default is None:
      group = parser.add_mutually_exclusive_group()
      group.add_argument(*names, dest=field.name, action="store_const", const=True,
                         default=None, help=_help(field, False))
      false_flag, false_help = md["false_flag"]
      group.add_argument(false_flag, dest=field.name, action="store_const", const=False,
                         help=false_help)
    elif field.default:
      # A True default needs a flag that says what turning it off means (--quiet).
      assert md["flag"], f"{field.name}: a bool defaulting to True needs a flag in its metadata"
      parser.add_argument(*names, dest=field.name, action="store_false", help=_help(field, False))
    else:
      parser.add_argument(*names, dest=field.name, action="store_true", help=_help(field, False))
  elif _is_pairs(kind):
    parser.add_argument(*names, dest=field.name, action="append", metavar=metavar,
                        required=required, help=_help(field, False))
  elif typing.get_origin(kind) is tuple:
    parser.add_argument(*names, dest=field.name, nargs="+", type=typing.get_args(kind)[0],
                        default=default, metavar=metavar, required=required,
                        help=_help(field, False))
  elif kind in (int, float, str):
    parser.add_argument(*names, dest=field.name, type=kind, default=default,
                        choices=md["choices"], metavar=None if md["choices"] else metavar,
                        required=required, help=_help(field, default is not None))
  else:
    raise TypeError(f"{field.name}: no flag for a field of type {hint}")


def add_config_arguments(parser: argparse.ArgumentParser, cls, exclude=(), required=()) -> None:
  """One flag per field of the config dataclass `cls`, except `exclude` (which the command
  fixes itself, through config_from_args). Fields without a default, and `required`, must be
  given."""
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = (set(exclude) | set(required)) - names
  if unknown:
    raise ValueError(f"{cls.__name__} has no field {', '.join(sorted(unknown))}")
  hints = typing.get_type_hints(cls)
  added = []
  for field in dataclasses.fields(cls):
    if field.name not in exclude:
      _add_flag(parser, field, hints[field.name], field.name in required)
      added.append(field.name)
  parser.set_defaults(**{FIELDS_ATTR: tuple(added)})


def config_from_args(cls, args: argparse.Namespace, **fixed):
  """The `cls` instance of the flags that add_config_arguments added, and `fixed` values (for
  the excluded fields, e.g. task="ner"); other fields keep their defaults."""
  hints = typing.get_type_hints(cls)
  values = {}
  for name in getattr(args, FIELDS_ATTR):
    value, kind = getattr(args, name), _without_none(hints[name])
    if _is_pairs(kind):
      value = parse_overrides(value)
    elif typing.get_origin(kind) is tuple:
      value = tuple(value or ())
    values[name] = value
  return cls(**{**values, **fixed})
