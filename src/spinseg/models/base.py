"""Models that remember how they were built: ``model.config`` is the constructor's arguments.

Every registered network derives from :class:`RemembersConfig` (instead of ``nn.Module``). When
its ``__init__`` returns, the arguments it was called with, completed with the defaults, are
stored as one JSON-serialisable dict in ``model.config``, so that ``save_checkpoint`` can write
them and ``load_model(path, name)`` can rebuild the same network without being told its config.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import typing

from torch import nn


def json_value(value, name: str):
    """``value`` with tuples turned into lists; anything JSON cannot hold raises ``TypeError``."""
    if isinstance(value, (list, tuple)):
        return [json_value(item, name) for item in value]
    if isinstance(value, dict):
        return {str(key): json_value(item, name) for key, item in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{name}={value!r} cannot be recorded in a checkpoint (not a JSON value)")


def dataclass_type(hint) -> type | None:
    """The dataclass in an annotation such as ``SPiNConfig | None`` (None when there is none)."""
    candidates = typing.get_args(hint) or (hint,)
    return next((item for item in candidates if dataclasses.is_dataclass(item) and isinstance(item, type)), None)


def recorded_config(init, instance, args: tuple, kwargs: dict) -> dict:
    """The arguments of one ``init(instance, *args, **kwargs)`` call as a flat dict of keyword arguments.

    Defaults are filled in; ``**overrides`` are merged in; a dataclass config argument (SPiN's
    ``config: SPiNConfig | None``) contributes its fields, its defaults when it was not given.
    """
    signature = inspect.signature(init)
    bound = signature.bind(instance, *args, **kwargs)
    bound.apply_defaults()
    try:
        hints = typing.get_type_hints(init)
    except (NameError, TypeError):
        hints = {}
    config: dict = {}
    overrides: dict = {}
    for index, (name, value) in enumerate(bound.arguments.items()):
        kind = signature.parameters[name].kind
        if index == 0:
            continue  # self
        if kind is inspect.Parameter.VAR_KEYWORD:
            overrides.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            raise TypeError(f"{type(instance).__name__}: *{name} arguments cannot be recorded; use keywords")
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            config.update(dataclasses.asdict(value))
        elif value is None and dataclass_type(hints.get(name)) is not None:
            config.update(dataclasses.asdict(dataclass_type(hints[name])()))
        else:
            config[name] = value
    config.update(overrides)
    return {name: json_value(value, name) for name, value in config.items()}


class RemembersConfig(nn.Module):
    """Base class of the networks: ``self.config`` holds the constructor's arguments (a dict).

    The outermost ``__init__`` of a call wins, so a subclass records its own arguments.
    """

    config: dict

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "records_config", False):
            return

        @functools.wraps(init)
        def recording_init(self, *args, **init_kwargs):
            init(self, *args, **init_kwargs)
            # A plain dict attribute (nn.Module keeps it in __dict__), replacing any the body set. When a
            # subclass's __init__ calls this one, the subclass's wrapper runs last and its record stays.
            self.config = recorded_config(init, self, args, init_kwargs)

        recording_init.records_config = True
        cls.__init__ = recording_init


class ReleaseSubnetworks:
    """Networks the release saved as one ``<subnetwork>_state_dict`` entry per sub-network (SPiN, U-Net).

    A subclass names its sub-network attributes in ``RELEASE_SUBNETWORKS``, in the release's order.
    """

    RELEASE_SUBNETWORKS: tuple[str, ...] = ()

    def release_state_dicts(self) -> dict:
        """The weights split into the release's ``<subnetwork>_state_dict`` entries."""
        return {f"{name}_state_dict": getattr(self, name).state_dict() for name in self.RELEASE_SUBNETWORKS}

    def load_release_state_dicts(self, checkpoint: dict) -> None:
        """Loads the release's ``<subnetwork>_state_dict`` entries (strict key and shape match)."""
        for name in self.RELEASE_SUBNETWORKS:
            getattr(self, name).load_state_dict(checkpoint[f"{name}_state_dict"], strict=True)

