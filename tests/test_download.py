"""``python -m spinseg.download``: fast offline failure with the manual link, and installing a zip."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from spinseg.cli.download import main as download_main
from spinseg.inference import pretrained as download

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]
SMALL_UNET_CONFIG = {"n_filters_encoder_segmentation": [4, 4, 8, 8, 8], "n_filters_decoder_segmentation": [8, 8, 4, 4]}


def small_unet_release_checkpoint(path: Path) -> Path:
    """A tiny U-Net saved in the release's format (``<subnetwork>_state_dict`` entries)."""
    from spinseg.models import build_model

    unet = build_model("unet", **SMALL_UNET_CONFIG)
    torch.save({**unet.release_state_dicts(), "train_step": 1}, path)
    return path


def release_zip(tmp_path: Path, members: dict[str, Path], prefix: str = "") -> Path:
    """A zip holding ``members`` ({path inside the zip: file}) under ``prefix``."""
    zip_path = tmp_path / "release.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        for name, source in members.items():
            archive.write(source, prefix + name)
    return zip_path


def check_config_flags() -> list[str]:
    return ["--check_config", f"spin={FIXTURES / 'spin_small_config.json'}",
            "--check_config", f"unet={json.dumps(SMALL_UNET_CONFIG)}"]


def test_offline_fails_fast_with_the_manual_link(tmp_path):
    # A closed local port stands for "no network": refused at once, deterministic.
    environment = {**os.environ, "PYTHONPATH": str(REPO / "src"), download.PROBE_HOST_VARIABLE: "127.0.0.1:1"}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "spinseg.download", "--output_dir", str(tmp_path / "models")],
                            capture_output=True, text=True, timeout=60, env=environment)
    assert time.monotonic() - started < 15
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and download.MANUAL_LINK in lines[0] and "--zip_path" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "models").exists()
    assert [path.name for path in tmp_path.iterdir()] == []  # no staging folder left


def test_probe_that_never_answers_is_bounded(monkeypatch):
    def hang(*args, **kwargs):
        time.sleep(30)
        raise OSError("timed out")  # like a real connect that finally gives up

    monkeypatch.setattr(download.socket, "create_connection", hang)
    started = time.monotonic()
    assert "no answer" in download.probe_connection("example.org:443", 0.5)
    assert time.monotonic() - started < 3


def test_zip_install_checks_and_installs(tmp_path, capsys):
    unet = small_unet_release_checkpoint(tmp_path / "unet.pth")
    zip_path = release_zip(tmp_path, {
        "spin/spin_atlas_traintest.pth": FIXTURES / "spin_small_original_format.pth",
        "u-net/unet_atlas_traintest.pth": unet,
        "u-net/unet_atlas_extra.pth": unet,
    }, prefix="pretrained_models/")
    output = tmp_path / "models"
    output.mkdir()
    (output / "README.md").write_text("keep me\n")
    assert download_main(["--zip_path", str(zip_path), "--output_dir", str(output), *check_config_flags()]) == 0
    printed = capsys.readouterr().out
    assert "spin/spin_atlas_traintest.pth: loads safely as 'spin' with --check_config config" in printed
    assert "u-net/unet_atlas_extra.pth: optional, reads safely" in printed
    for relative in download.EXPECTED_FILES.values():
        assert (output / relative).is_file()
    assert (output / "README.md").read_text() == "keep me\n"
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".")) == []
    # Installing again replaces the folders in place.
    assert download_main(["--zip_path", str(zip_path), "--output_dir", str(output), *check_config_flags()]) == 0
    assert sorted(path.name for path in output.iterdir()) == ["README.md", "spin", "u-net"]


@pytest.mark.parametrize("case", ["missing_unet", "wrong_config", "not_a_zip", "zip_slip"])
def test_bad_zip_is_one_line_exit_2_and_installs_nothing(tmp_path, capsys, case):
    spin = FIXTURES / "spin_small_original_format.pth"
    members = {"spin/spin_atlas_traintest.pth": spin}
    if case == "wrong_config":  # paper config for SPiN: the small fixture does not fit it
        members["u-net/unet_atlas_traintest.pth"] = small_unet_release_checkpoint(tmp_path / "unet.pth")
    if case == "zip_slip":
        members["../escape.pth"] = spin
    zip_path = release_zip(tmp_path, members)
    if case == "not_a_zip":
        zip_path.write_text("<html>Google Drive quota exceeded</html>")
    output = tmp_path / "models"
    flags = ["--check_config", f"unet={json.dumps(SMALL_UNET_CONFIG)}"] if case == "wrong_config" else []
    with pytest.raises(SystemExit) as exit_info:
        download_main(["--zip_path", str(zip_path), "--output_dir", str(output), *flags])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    expected = {"missing_unet": "missing expected file(s): u-net/unet_atlas_traintest.pth",
                "wrong_config": "spin/spin_atlas_traintest.pth: checkpoint does not fit model 'spin'",
                "not_a_zip": "not a zip file", "zip_slip": "outside the folder"}[case]
    assert len(lines) == 1 and expected in lines[0], lines
    assert not output.exists()
    assert not (tmp_path / "escape.pth").exists()
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".")) == []
