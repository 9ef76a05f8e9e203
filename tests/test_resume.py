"""Kill an `optima run` with SIGKILL in the middle of a stage, rerun the same command, and check that the run
finishes with every record exactly once, that finished stages are not redone (their files are byte-identical),
and that later stages consumed exactly the records of the stages before them.

(Comparing numbers with an uninterrupted run is not a valid check here: the tiny random model's logits are so
flat that greedy argmax can flip between processes on float rounding.)"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from optima_nb.config import read_jsonl, to_dict
from optima_nb.models import tiny_random_model
from optima_nb.pipeline import tiny_run_config

OPTIMA = [sys.executable, "-c", "import sys; from optima_nb.cli import main; sys.exit(main())"]


def run_cmd(cfg_path, out, env):
    return OPTIMA + ["run", str(cfg_path), "--out", str(out), "--quiet"]


def start(cfg_path, out, env):
    return subprocess.Popen(run_cmd(cfg_path, out, env), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)


def kill_when(proc, path: Path, timeout: float = 300):
    "SIGKILL the run's process group as soon as `path` exists."
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, f"run ended before {path} appeared: {proc.stderr.read().decode()[-2000:]}"
        assert time.time() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def metrics_without_time(out: Path):
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in read_jsonl(out / "metrics.jsonl")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    tiny_random_model(save_to=d / "tiny")
    cfg = tiny_run_config(str(d / "tiny"), ["sft", "dpo"])
    cfg_path = d / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(to_dict(cfg)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return d, cfg_path, env


def texts(records):
    return [(r["instance_id"], r["sample"], [t["text"] for t in r["turns"]]) for r in records]


@pytest.mark.parametrize("kill_at", ["iter_00/train.tmp", "iter_01/mcts.tmp"])
def test_kill_and_resume(setup, kill_at):
    d, cfg_path, env = setup
    out = d / kill_at.replace("/", "_").replace(".", "_")
    proc = start(cfg_path, out, env)
    kill_when(proc, out / kill_at)
    stage = (out / kill_at).name.removesuffix(".tmp")
    assert not (out / kill_at).with_name(stage).exists(), "the interrupted stage must not look finished"
    done_before = {p: p.read_bytes() for p in out.glob("iter_*/*/*") if p.is_file()}
    assert done_before, "the kill came before any stage finished"
    res = subprocess.run(run_cmd(cfg_path, out, env), env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    # finished stages were not redone
    for path, data in done_before.items():
        assert path.read_bytes() == data, f"{path} was rewritten"
    # nothing half-written is left, every record exists once
    assert not list(out.glob("iter_*/*.tmp")) and not list(out.glob("**/*.tmp"))
    gen = read_jsonl(out / "iter_00" / "generate" / "records.jsonl")
    keys = [(r["instance_id"], r["sample"]) for r in gen]
    assert len(keys) == len(set(keys)) == 2 * 2
    metrics = metrics_without_time(out)
    assert [m["iteration"] for m in metrics] == ["base", 0, 1]
    # each stage consumed exactly the records of the one before it
    rewarded = read_jsonl(out / "iter_00" / "reward" / "records.jsonl")
    assert texts(rewarded) == texts(gen)
    selected = read_jsonl(out / "iter_00" / "select" / "selected.jsonl")
    assert {(r["instance_id"], r["sample"]) for r in selected} <= set(keys)
    trees = json.loads((out / "iter_01" / "mcts" / "trees.json").read_text())
    assert len(trees) == 2 and all(t["nodes"][0]["visits"] == 2 for t in trees)
    assert (out / "iter_01" / "train" / "adapter" / "adapter_config.json").exists()
