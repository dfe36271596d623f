"""``DEVICE=cpu STEPS=4 bash bash/gpu_smoke.sh``: the GPU smoke script's commands on the CPU, so
that the script cannot rot while no GPU runs it (issue 17)."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPECTED_CHECKS = {"data", "training", "resume", "resume_more_gpus", "amp_training", "evaluate_devices", "predict",
                   "kiunet_memory", "benchmark", "torchrun_gloo"}


@pytest.mark.slow
def test_gpu_smoke_script_passes_in_cpu_mode(tmp_path):
    environment = {**os.environ, "DEVICE": "cpu", "STEPS": "4", "WORK": str(tmp_path), "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(["bash", str(ROOT / "bash" / "gpu_smoke.sh")], capture_output=True, text=True,
                               env=environment, timeout=1200)
    checks = dict(re.findall(r"^CHECK (\w+): (\w+)", completed.stdout, flags=re.MULTILINE))
    assert set(checks) == EXPECTED_CHECKS, completed.stdout
    assert all(status == "ok" for status in checks.values()), completed.stdout
    assert completed.returncode == 0, completed.stdout + completed.stderr[-2000:]


def test_gpu_smoke_script_fails_when_a_check_fails(tmp_path):
    """A failing command must print FAIL and make the exit code non-zero (here: no such device)."""
    environment = {**os.environ, "DEVICE": "tpu", "STEPS": "2", "WORK": str(tmp_path), "OMP_NUM_THREADS": "1"}
    script = (ROOT / "bash" / "gpu_smoke.sh").read_text()
    # Only the first two checks: data (passes) and training (fails on the unknown device).
    head = script.split("check resume check_resume")[0] + '(( failures == 0 ))\n'
    (tmp_path / "smoke_head.sh").write_text(head.replace('cd "$(dirname "$0")/.."', f'cd "{ROOT}"'))
    completed = subprocess.run(["bash", str(tmp_path / "smoke_head.sh")], capture_output=True, text=True,
                               env=environment, timeout=300)
    assert "CHECK data: ok" in completed.stdout and "CHECK training: FAIL" in completed.stdout, completed.stdout
    assert completed.returncode != 0
