"""Training settings out of range are refused in one line; the slice stacking holds for any shape."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spinseg.recipes.config import TrainConfig, schedule_value, validate_train_config
from spinseg.data.volumes import stack_slices
from spinseg.errors import UserInputError


def test_the_default_recipe_is_valid():
    validate_train_config(TrainConfig())


@pytest.mark.parametrize("overrides, fragment", [
    ({"learning_rates": [-1e-3, 1e-4, 5e-5]}, "--learning_rates -0.001: must be > 0"),
    ({"learning_rates": [float("nan"), 1e-4, 5e-5]}, "--learning_rates nan: must be > 0"),
    ({"learning_rates": [1e-3], "learning_schedule": [10, 20]}, "same number of entries"),
    ({"learning_schedule": [400, 300, 1600]}, "increasing"),
    ({"n_chunk": 0}, "--n_chunk 0: must be >= 1"),
    ({"n_chunk": -3}, "--n_chunk -3: must be >= 1"),
    ({"lr_schedule": "cosine"}, "--lr_schedule 'cosine' is not one of steps, plateau"),
    ({"lr_schedule": "plateau", "n_validation": 0}, "need --n_validation or --validation_epochs"),
    ({"plateau_factor": 1.0}, "--plateau_factor 1: must lie in (0, 1)"),
    ({"plateau_patience": 0}, "--plateau_patience 0: must be >= 1"),
    ({"n_batch": 0}, "--n_batch 0: must be >= 1"),
    ({"augmentation_probabilities": [1.0]}, "--augmentation_probabilities and --augmentation_schedule"),
    ({"augmentation_probabilities": [1.5, 0.5]}, "--augmentation_probabilities 1.5: must lie in [0, 1]"),
    ({"positive_class_sample_rates": [0.9, 0.5]}, "--positive_class_sample_rates and"),
    ({"crop_shape": [4, 4]}, "--crop_shape"),
    ({"w_positive_class": 0.0}, "--w_positive_class"),
    ({"w_weight_decay": -1.0}, "--w_weight_decay"),
    ({"augmentation_resize_and_pad": [1.1, 1.0]}, "--augmentation_resize_and_pad"),
    ({"dataset_means": [1.0, 2.0]}, "--dataset_means and --dataset_stddevs"),
    ({"dataset_stddevs": [0.0]}, "--dataset_stddevs 0: must be > 0"),
    ({"n_checkpoint": 0}, "--n_checkpoint 0: must be >= 1"),
    ({"max_steps": 0}, "--max_steps"),
    ({"val_batch_size": 0}, "--val_batch_size"),
    ({"val_multimodal_scan_paths": "x.txt"}, "give both"),
])
def test_out_of_range_values_are_refused_in_one_line(overrides, fragment):
    with pytest.raises(UserInputError) as caught:
        validate_train_config(TrainConfig(**overrides))
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("overrides, fragment", [
    ({"batch_size": -3}, "--batch_size -3: must be >= 1"),
    ({"batch_size": 0}, "--batch_size 0: must be >= 1"),
    ({"n_chunk": 0}, "--n_chunk 0: must be >= 1"),
    ({"n_thread": -1}, "--n_thread -1: must be >= 0"),
    ({"voxel_volume_ml": 0.0}, "--voxel_volume_ml 0: must be > 0"),
])
def test_evaluation_numbers_out_of_range_are_refused_before_work(overrides, fragment):
    # Issue 16: ``evaluate --batch_size -3`` predicted nothing and printed tables with exit 0.
    from spinseg.recipes.config import EvaluateConfig, validate_evaluate_config

    validate_evaluate_config(EvaluateConfig())
    with pytest.raises(UserInputError) as caught:
        validate_evaluate_config(EvaluateConfig(**overrides))
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_every_numeric_field_of_every_config_has_bounds():
    # The one range table covers every number a command takes, so a new flag cannot slip past it.
    import types
    import typing

    from spinseg.recipes.config import NUMERIC_BOUNDS, EvaluateConfig

    for cls in (TrainConfig, EvaluateConfig):
        for name, hint in typing.get_type_hints(cls).items():
            # int, float, list[int], list[float], and any of them "| None"
            arguments = set(typing.get_args(hint)) - {type(None)} if isinstance(hint, types.UnionType) else {hint}
            arguments = {typing.get_args(a)[0] if typing.get_origin(a) is list else a for a in arguments}
            numeric = bool(arguments) and arguments <= {int, float}
            if numeric:
                assert name in NUMERIC_BOUNDS, f"{cls.__name__}.{name} has no range in NUMERIC_BOUNDS"


def test_every_problem_is_reported_at_once():
    with pytest.raises(UserInputError) as caught:
        validate_train_config(TrainConfig(n_batch=0, n_chunk=0))
    assert "--n_batch" in str(caught.value) and "--n_chunk" in str(caught.value)


def test_schedule_value_counts_epochs():
    assert [schedule_value([3e-4, 1e-4, 5e-5], [400, 1400, 1600], epoch) for epoch in (0, 399, 400, 1399, 1400, 5000)] == [
        3e-4, 3e-4, 1e-4, 1e-4, 5e-5, 5e-5]
    assert schedule_value([0.95], [-1], 10**6) == 0.95


# ---------------------------------------------------------------------------------------------
# Property-based: stacking n_chunk adjacent slices (the 2.5-D input) for any volume and index.

@st.composite
def volumes_and_indices(draw):
    height, width, depth = draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.integers(1, 12))
    n_chunk = draw(st.integers(1, 13))  # odd: centred; even: the release D-UNet's i - n/2 .. i + n/2 - 1
    index = draw(st.integers(0, depth - 1))
    seed = draw(st.integers(0, 2**16))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.uint8, np.int16]))
    volume = np.random.default_rng(seed).uniform(0, 200, (height, width, depth)).astype(dtype)
    pad_value = draw(st.floats(-1e3, 1e3, allow_nan=False, width=32))
    return volume, index, n_chunk, pad_value


@settings(max_examples=150, deadline=None)
@given(volumes_and_indices())
def test_stack_slices_centres_the_slice_and_pads_outside(case):
    volume, index, n_chunk, pad_value = case
    chunk = stack_slices(volume, index, n_chunk, pad_value)
    height, width, depth = volume.shape
    half = n_chunk // 2
    assert chunk.shape == (n_chunk, height, width) and chunk.dtype == np.float32
    np.testing.assert_array_equal(chunk[half], volume[..., index].astype(np.float32))
    for channel in range(n_chunk):
        source = index - half + channel
        if 0 <= source < depth:
            np.testing.assert_array_equal(chunk[channel], volume[..., source].astype(np.float32))
        else:
            assert np.all(chunk[channel] == np.float32(pad_value))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 8), st.integers(0, 3).map(lambda k: 2 * k + 1))
def test_stack_slices_reads_a_memory_mapped_volume_like_an_array(depth, n_chunk):
    import tempfile
    from pathlib import Path

    volume = np.arange(3 * 4 * depth, dtype=np.float32).reshape(3, 4, depth)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "volume.npy"
        np.save(path, volume)
        mapped = np.load(path, mmap_mode="r")
        for index in range(depth):
            np.testing.assert_array_equal(stack_slices(mapped, index, n_chunk, -1.0), stack_slices(volume, index, n_chunk, -1.0))
        del mapped
