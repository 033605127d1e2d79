"""benchmarks/gpu_check.sh runs end to end (tiny sizes on the CPU) and prints every figure the issue asks for."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_smoke_prints_every_figure():
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks/gpu_check.sh"), "--cpu-smoke"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for label in (
        "ceiling: bare loop, synthetic in-memory",
        "trainer on shards, hard labels",
        "trainer on shards, KD cached top-k",
        r"trainer on shards, KD online \(2 teachers\)",
        r"ensemble inference \(2 models\)",
    ):
        m = re.search(label + r"\s+([\d,]+) frames/s", out)
        assert m and float(m.group(1).replace(",", "")) > 0, label
    assert re.search(r"evaluation .*\s([\d.]+) s per hour of audio", out)
    assert re.search(r"real-data training / ceiling: [\d.]+", out) and re.search(
        r"KD cached / hard labels: +[\d.]+", out
    )
