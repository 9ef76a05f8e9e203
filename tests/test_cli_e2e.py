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


def _refused(args, out):
    "Run the console script; assert exit code 2, one stderr line, no traceback and nothing written to `out`."
    proc = subprocess.run([OPTIMA, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists() or out.is_file()
    return proc.stderr


@pytest.fixture
def tiny_cfg(tiny_dir, tmp_path):
    import yaml
    from optima_nb.config import to_dict
    from optima_nb.pipeline import tiny_run_config
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(to_dict(tiny_run_config(str(tiny_dir), ["sft"]))))
    return p


@pytest.mark.parametrize("case", ["set_malformed", "set_range", "config_dir", "out_file", "config_latin1", "config_empty",
                                  "data_missing", "data_latin1", "unknown_task", "bad_model"])
def test_bad_run_input_is_one_line_exit_2_nothing_written(case, tiny_cfg, tmp_path):
    out = tmp_path / "out"
    cfg, extra, expect = tiny_cfg, [], None
    if case == "set_malformed": extra, expect = ["--set", "task.n_train=[1"], "--set 'task.n_train=[1': task.n_train: the value is not valid YAML"
    if case == "set_range": extra, expect = ["--set", "selection.top_fraction=2"], "tiny.yaml.selection.top_fraction: must be > 0, <= 1, got 2.0"
    if case == "config_dir": cfg, expect = tmp_path, "is a folder, not a config file"
    if case == "out_file":
        out.write_text("x")
        expect = "out: --out is a file, not a folder"
    if case == "config_latin1":
        cfg = tmp_path / "latin1.yaml"
        cfg.write_bytes("name: caf\xe9\n".encode("latin-1"))
        expect = "latin1.yaml:1: not UTF-8 text (byte 0xe9)"
    if case == "config_empty":
        cfg = tmp_path / "empty.yaml"
        cfg.write_text("")
        expect = "the config is empty; write {} to use every default"
    if case == "data_missing": extra, expect = ["--set", "task.name=gsm8k", "--set", f"task.path={tmp_path / 'none.jsonl'}"], "tiny.yaml.task.path: "
    if case == "data_latin1":
        (tmp_path / "g.jsonl").write_bytes(b'{"question": "caf\xe9", "answer": "#### 1"}\n')
        extra, expect = ["--set", "task.name=gsm8k", "--set", f"task.path={tmp_path / 'g.jsonl'}"], "g.jsonl:1: not UTF-8 text"
    if case == "unknown_task": extra, expect = ["--set", "task.name=squad"], "tiny.yaml.task.name: unknown task 'squad'"
    if case == "bad_model": extra, expect = ["--set", "model.name=/no/such/model"], "tiny.yaml.model.name: '/no/such/model' is neither"
    err = _refused(["run", cfg, "--out", out, *extra], out)
    assert expect in err, err


def test_second_process_on_the_same_out_is_refused(tiny_cfg, tmp_path):
    "A run directory locked by another process: refused with a clear message, its stale .tmp stage left alone."
    from filelock import FileLock
    out = tmp_path / "run"
    out.mkdir()
    (out / "iter_00" / "sft.tmp").mkdir(parents=True)
    lock = FileLock(out / ".lock")
    with lock.acquire(timeout=5):
        proc = subprocess.run([OPTIMA, "run", str(tiny_cfg), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "another optima process is running in this run directory" in proc.stderr and "Traceback" not in proc.stderr
    assert (out / "iter_00" / "sft.tmp").exists() and not (out / "config.yaml").exists()


def test_scoreflow_empty_validation_file_is_refused(tiny_dir, tmp_path):
    import yaml
    data = tmp_path / "aflow"
    data.mkdir()
    (data / "gsm8k_validate.jsonl").write_text("")
    cfg = tmp_path / "sf.yaml"
    cfg.write_text(yaml.safe_dump({"benchmarks": ["gsm8k"], "data_path": str(data), "generator": {"model": str(tiny_dir)},
                                   "executor": {"model": str(tiny_dir)}}))
    err = _refused(["scoreflow", cfg, "--out", tmp_path / "sf"], tmp_path / "sf")
    assert "gsm8k_validate.jsonl: the validation file holds no problems" in err, err
