"""End to end: the installed `optima` console script runs as a separate process and fails cleanly on bad input."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from optima_nb.models import tiny_random_model

OPTIMA = shutil.which("optima") or str(Path(sys.executable).parent / "optima")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    tiny_random_model(save_to=d)
    return d


def test_bench_generate_cli(tiny_dir, tmp_path):
    out = tmp_path / "gen.json"
    proc = subprocess.run([OPTIMA, "bench", "generate", "--model", str(tiny_dir), "--n-prompts", "4",
                           "--batch-sizes", "1", "4", "--max-new-tokens", "4", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert res["identical"] is True and res["speedup"] > 0
    assert "speedup" in proc.stdout


def test_bad_model_path_is_one_clear_line(tmp_path):
    proc = subprocess.run([OPTIMA, "bench", "rollout", "--model", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "neither a known model name" in proc.stderr and "Traceback" not in proc.stderr
