"""The authors' Keras weights (X-Net, CLCI-Net, D-UNet) and KiU-Net's release state dict load and reproduce the originals.

Fixtures made by running the release's own model code with seeded weights (see
docs/keras_weights.md); each ``*_fixture.json`` names the weights file, the input/output pair and
the tolerance on probabilities.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from spinseg.checkpoint import load_model

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_FILES = sorted(path.name for path in FIXTURES.glob("*_fixture.json"))


def test_every_release_fixture_is_covered():
    assert {json.loads((FIXTURES / name).read_text())["model"] for name in FIXTURE_FILES} == {"xnet", "clcinet", "dunet", "kiunet"}
    assert len(FIXTURE_FILES) == 6


@pytest.mark.parametrize("fixture_name", FIXTURE_FILES)
def test_release_weights_reproduce_the_release_outputs(fixture_name):
    fixture = json.loads((FIXTURES / fixture_name).read_text())
    model = load_model(FIXTURES / fixture["weights"], fixture["model"])
    data = np.load(FIXTURES / fixture["io"])
    x = torch.from_numpy(np.ascontiguousarray(data[fixture["input_key"]].transpose(fixture["to_nchw"])))
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (x.shape[0], 1, *x.shape[2:])
    probability = torch.sigmoid(logits).numpy()
    expected = data[fixture["output_key"]]
    if "channel" in fixture:  # KiU-Net: softmax over the release's two output channels, NCHW
        expected = expected[:, fixture["channel"]]
    else:  # Keras: NHWC with one channel
        expected = expected[..., 0]
    difference = np.abs(probability[:, 0] - expected).max()
    tolerance = fixture["tolerance"]
    if fixture["model"] == "xnet":
        # The X-Net fixture is ill-conditioned: TensorFlow's own float32 rerun of it on another CPU
        # lands 8.9e-3 from it (xnet_small_float64_reference.npz), so no float32 forward can meet
        # 1e-4 here; test_xnet_reproduces_the_release_in_float64 holds the 1e-4 bar instead. This
        # float32 check keeps its earlier bound: twice our own float32-vs-float64 spread, far below
        # the 0.45-1.0 of a wrong load (the fixture's negative controls).
        with torch.no_grad():
            exact = torch.sigmoid(model.double()(x.double())).numpy()
        tolerance = max(tolerance, 2 * float(np.abs(exact[:, 0] - probability[:, 0]).max()))
        assert tolerance < 0.02
    assert difference <= tolerance, f"{fixture_name}: max |difference| {difference:.2e}"


def test_xnet_reproduces_the_release_in_float64():
    """Our X-Net in float64 against the release's Keras X-Net run in float64 on the same weights and
    input (setup/fixtures/make_xnet_float64_reference.py): the fixture's 1e-4 bar, with no float32
    rounding on either side."""
    fixture = json.loads((FIXTURES / "xnet_weights_fixture.json").read_text())
    reference = np.load(FIXTURES / "xnet_small_float64_reference.npz")
    model = load_model(FIXTURES / fixture["weights"], "xnet").double()
    data = np.load(FIXTURES / fixture["io"])
    x = torch.from_numpy(np.ascontiguousarray(data[fixture["input_key"]].transpose(fixture["to_nchw"]))).double()
    with torch.no_grad():
        probability = torch.sigmoid(model(x))[:, 0].numpy()
    difference = np.abs(probability - reference["output_float64"]).max()
    assert difference <= fixture["tolerance"], f"max |difference| {difference:.2e}"
    # TensorFlow's own float32 rerun is far from its float64 result: that is why the float32
    # fixture cannot be met to 1e-4 (recorded so a reader sees the figure the test relies on).
    assert float(reference["tensorflow_float32_vs_float64"]) > 100 * fixture["tolerance"]
