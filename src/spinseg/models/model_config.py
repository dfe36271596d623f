"""How a model's constructor arguments are given on the command line and completed from the input width."""
from __future__ import annotations

import json
from pathlib import Path

from spinseg.errors import UserInputError


def parse_model_config(text: str) -> dict:
    """``--model_config``: a JSON object, or the path of a JSON file holding one."""
    if not text:
        return {}
    try:
        # Inline JSON starts with "{"; anything else names a file (checking it as a path first would
        # fail on long inline configs: the name is too long for the file system).
        source = text if text.lstrip().startswith("{") else Path(text).read_text()
        config = json.loads(source)
    except (OSError, ValueError, RecursionError) as error:  # ValueError: bad JSON or not UTF-8
        raise UserInputError(f"--model_config {text[:80]!r}: not a JSON object or JSON file "
                             f"({(str(error).splitlines() or [type(error).__name__])[0][:120]})") from None
    if not isinstance(config, dict):
        raise UserInputError(f"--model_config {text[:80]!r}: expected a JSON object")
    # A release-style config file (as in tests/fixtures) nests the constructor arguments under "config".
    config = config.get("config", config) if set(config) <= {"config", "n_parameters", "input_shape", "output_shapes"} else config
    check_model_config_counts(config, text)
    return config


# Keys whose numbers are counts of filters or channels: each must be a whole number >= 1.
COUNT_KEY_WORDS = ("filter", "channels")


def check_model_config_counts(config: dict, source: str) -> None:
    """a negative or zero filter/channel count ended in a torch traceback; refuse it in one
    line naming ``--model_config`` (the file or the inline JSON) and the key."""
    for key, value in config.items():
        if not isinstance(key, str) or not any(word in key for word in COUNT_KEY_WORDS):
            continue
        for item in value if isinstance(value, list) else ([] if value is None else [value]):
            if isinstance(item, bool) or not isinstance(item, int) or item < 1:
                raise UserInputError(f"--model_config {source[:80]!r}: {key} must hold whole numbers >= 1 (found {item!r})")



def model_input_config(model_name: str, n_chunk: int, n_channels_per_slice: int, model_config: dict) -> dict:
    """Adds the input width (n_chunk slices x channels) to a model config unless it sets one."""
    if "input_channels" in model_config or "input_channels_segmentation" in model_config:
        return model_config
    return {**model_config, "input_channels": n_chunk * n_channels_per_slice}
