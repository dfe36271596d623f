"""The comparison runs every model through the same trainer and evaluator and writes the tables."""
import json

import pytest

from conftest import write_volume_set
from spinseg.experiments.compare import compare, comparison_markdown
from spinseg.errors import UserInputError
from spinseg.recipes.named import RECIPES, recipe, train_defaults
from spinseg.models import available_models


def test_every_registered_model_has_a_recipe():
    assert set(RECIPES) == set(available_models())
    assert train_defaults("unet")["w_weight_decay"] == 1e-7
    assert train_defaults("unet")["n_chunk"] == 1
    with pytest.raises(UserInputError):
        recipe("vnet")


@pytest.mark.slow
def test_comparison_of_all_models_end_to_end(tmp_path):
    scans, masks = write_volume_set(tmp_path / "data", 4, shape=(32, 36, 8), seed=4)
    rows = compare(
        list(RECIPES), str(scans), str(masks), str(scans), str(masks), str(tmp_path / "out"),
        max_steps=2, crop_shape=[24, 24], n_batch=2, n_workers=0, device="cpu",
    )
    assert [row["model"] for row in rows] == list(RECIPES)
    for row in rows:
        assert row["train_steps"] == 2
        assert all(0.0 <= row["table2"][key] <= 1.0 for key in ("dice", "iou", "precision", "recall"))
        assert row["parameters"] > 0 and row["seconds_per_volume"] > 0
    text = (tmp_path / "out" / "comparison.md").read_text()
    for row in rows:
        assert f"| {row['display_name']} |" in text
    saved = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert len(saved) == len(RECIPES)
    for name in ("comparison_bar_chart.png", "detection_vs_size.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert comparison_markdown(rows).count("\n") == len(rows) + 1
