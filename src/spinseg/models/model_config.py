"""How a model's constructor arguments are given on the command line and completed from the input width.

A model config comes from a file (``--model_config x.json``, the ``config.json`` of a run folder),
inline JSON, or a checkpoint's record; :func:`check_model_config` checks it against the model's
constructor before anything is built, so an unknown key, a value of the wrong type or a count < 1
is one line naming where the config came from and the key.
"""
from __future__ import annotations

import collections.abc
import difflib
import inspect
import json
import types
import typing
from pathlib import Path

from spinseg.errors import UserInputError

# The keys of a release-style config file (tests/fixtures/*_config.json): constructor arguments under "config".
RELEASE_CONFIG_KEYS = {"config", "n_parameters", "input_shape", "output_shapes"}


class ModelConfig(dict):
    """A parsed ``--model_config``: the constructor arguments, plus where they came from (``source``,
    e.g. ``"--model_config run/checkpoints/config.json"``) and, for a run folder's ``config.json``,
    the model it was written for (``model_name``), so later checks can name the file."""

    def __init__(self, values: dict, source: str = "--model_config", model_name: str | None = None):
        super().__init__(values)
        self.source = source
        self.model_name = model_name


class DuplicateKey(Exception):
    """A JSON object naming one key twice (raised by :func:`unique_keys`)."""


def unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """``json.loads`` hook building an object; a key given twice raises :class:`DuplicateKey`."""
    keys = [key for key, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise DuplicateKey(key)
    return dict(pairs)


def parse_model_config(text: str, flag: str = "--model_config") -> ModelConfig:
    """``--model_config`` (or ``flag``): a JSON object, or the path of a JSON file holding one (a release-style
    config file, or the ``config.json`` a training run writes, whose ``model_config`` is taken)."""
    if not text:
        return ModelConfig({}, flag)
    inline = text.lstrip().startswith("{")
    separator = "" if flag.endswith("=") else " "  # "--check_config spin=x.json" reads as typed
    source = f"{flag}{separator}{text[:80]!r}" if inline else f"{flag}{separator}{text}"
    try:
        # Inline JSON starts with "{"; anything else names a file (checking it as a path first would
        # fail on long inline configs: the name is too long for the file system). utf-8-sig: editors
        # on Windows start a file with a byte-order mark, which is no JSON error worth stopping for.
        config = json.loads(text if inline else Path(text).read_text(encoding="utf-8-sig"), object_pairs_hook=unique_keys)
    except DuplicateKey as error:  # JSON keeps the last of two values silently; which one was meant?
        raise UserInputError(f"{source}: key {error.args[0]!r} is given twice") from None
    except (OSError, ValueError, RecursionError) as error:  # ValueError: bad JSON or not UTF-8
        raise UserInputError(f"{source}: not a JSON object or JSON file "
                             f"({(str(error).splitlines() or [type(error).__name__])[0][:120]})") from None
    if not isinstance(config, dict):
        raise UserInputError(f"{source}: expected a JSON object, found {type(config).__name__}")
    model_name = None
    if isinstance(config.get("model_config"), dict) and "model_name" in config:
        # A run folder's config.json (every training flag): its model_config is the constructor's.
        model_name, config = config.get("model_name"), config["model_config"]
    elif set(config) <= RELEASE_CONFIG_KEYS and isinstance(config.get("config", {}), dict):
        config = config.get("config", config)
    for key, value in config.items():  # counts < 1 are wrong for every model: refused before one is chosen
        check_value_range(str(key), value, source)
    return ModelConfig(config, source, model_name if isinstance(model_name, str) else None)


def model_config_source(config: dict, default: str = "--model_config") -> str:
    """Where ``config`` came from (a :class:`ModelConfig`'s ``source``), else ``default``."""
    return getattr(config, "source", default)


def constructor_hints(name: str) -> dict[str, object]:
    """{key: type annotation} of every config key model ``name`` takes (a dataclass config's fields
    included, e.g. SPiN's ``SPiNConfig``)."""
    from spinseg.models.base import dataclass_type
    from spinseg.models.registry import model_class

    init = model_class(name).__init__
    hints = typing.get_type_hints(init)
    accepted: dict[str, object] = {}
    for parameter in list(inspect.signature(init).parameters.values())[1:]:
        if parameter.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
            continue
        config_class = dataclass_type(hints.get(parameter.name))
        if config_class is not None:
            accepted.update(typing.get_type_hints(config_class))
        else:
            accepted[parameter.name] = hints.get(parameter.name, typing.Any)
    return accepted


def value_fits(value, hint) -> bool:
    """True when a JSON ``value`` fits the annotation ``hint`` (int, float, str, bool, lists of them,
    optional ones); annotations of other kinds accept anything."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(value_fits(value, item) for item in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence):
        element = (typing.get_args(hint) or (typing.Any,))[0]
        return isinstance(value, list) and all(value_fits(item, element) for item in value)
    return True


def describe_hint(hint) -> str:
    """``"a whole number"``, ``"a list of text values"``... for an annotation :func:`value_fits` checks."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_hint(item) for item in typing.get_args(hint))
    if origin in (list, tuple, collections.abc.Sequence):
        element = (typing.get_args(hint) or (typing.Any,))[0]
        return "a list of " + {int: "whole numbers", float: "numbers", str: "text values", bool: "true/false"}.get(element, "values")
    return {type(None): "null", bool: "true or false", int: "a whole number", float: "a number", str: "text"}.get(hint, str(hint))


# Keys whose numbers are counts of filters or channels: each must be a whole number >= 1.
COUNT_KEY_WORDS = ("filter", "channels")


def check_model_config(name: str, config: dict, source: str | None = None) -> None:
    """Refuses, in one line naming ``source`` (the file, flag or checkpoint the config came from) and
    the key, a config model ``name`` cannot take: an unknown key, a value of the wrong type, a filter
    or channel count < 1, a dropout rate outside [0, 1), or a run folder's config of another model."""
    source = source or model_config_source(config)
    written_for = getattr(config, "model_name", None)
    if written_for and written_for != name:
        raise UserInputError(f"{source}: a config of model {written_for!r}, not {name!r}")
    accepted = constructor_hints(name)
    for key, value in config.items():
        if key not in accepted:
            close = difflib.get_close_matches(str(key), list(accepted), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(accepted)}"
            raise UserInputError(f"{source}: unknown key {key!r} for model {name!r} ({hint})")
        if not value_fits(value, accepted[key]):
            raise UserInputError(f"{source}: {key} must be {describe_hint(accepted[key])} (found {json.dumps(value)[:80]})")
        check_value_range(key, value, source)


def check_value_range(key: str, value, source: str) -> None:
    """A filter/channel count < 1 or a dropout rate outside [0, 1): one line naming ``source`` and ``key``
    (a negative count otherwise ends in a torch traceback)."""
    if any(word in key for word in COUNT_KEY_WORDS):
        for item in value if isinstance(value, list) else ([] if value is None else [value]):
            if isinstance(item, bool) or not isinstance(item, int) or item < 1:
                raise UserInputError(f"{source}: {key} must hold whole numbers >= 1 (found {item!r})")
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key == "dropout_rate" and is_number and not 0 <= value < 1:
        raise UserInputError(f"{source}: {key} must lie in [0, 1) (found {value!r})")


def model_input_config(model_name: str, n_chunk: int, n_channels_per_slice: int, model_config: dict) -> dict:
    """Adds the input width (n_chunk slices x channels) to a model config unless it sets one."""
    if "input_channels" in model_config or "input_channels_segmentation" in model_config:
        return model_config
    return {**model_config, "input_channels": n_chunk * n_channels_per_slice}
