"""Multi-process training: two CPU processes (gloo) under `accelerate launch` train one SFT stage through
`python -m optima_nb.trainers` and write one adapter, atomically.

`accelerate launch --cpu --num_processes 2` would start ONE process (accelerate's multi-CPU mode needs an MPI
hostfile); `--multi_gpu` selects the torchrun launcher, whose processes use gloo when no GPU is visible.
"""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from optima_nb.config import atomic_write_jsonl, save_config
from optima_nb.trainers import TrainConfig, free_port, own_turn_example
from optima_nb.models import load_model, tiny_random_model

ACCELERATE = shutil.which("accelerate") or str(Path(sys.executable).parent / "accelerate")

VIEWS = [
    [{"role": "system", "content": "You are Alice. Where does Lena live?"}, {"role": "assistant", "content": "Who knows Lena?"},
     {"role": "user", "content": "Bob: Lena lives in Oslo."}, {"role": "assistant", "content": "<A>Oslo</A>"}],
    [{"role": "system", "content": "You are Bob. Where does Lena live?"}, {"role": "user", "content": "Alice: Who knows Lena?"},
     {"role": "assistant", "content": "Lena lives in Oslo."}],
]


@pytest.mark.timeout(600)
def test_sft_on_two_cpu_processes(tmp_path):
    tiny, tok = tiny_random_model(save_to=tmp_path / "tiny")
    examples = [own_turn_example(tok, v, 256) for v in VIEWS] * 2
    atomic_write_jsonl(tmp_path / "sft.jsonl", examples)
    save_config(TrainConfig(max_steps=2, per_device_batch_size=1, logging_steps=1, learning_rate=1e-2, warmup_ratio=0.0),
                tmp_path / "train.yaml")
    out = tmp_path / "adapter"
    cmd = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "optima_nb.trainers", "sft", "--model", str(tmp_path / "tiny"), "--data", str(tmp_path / "sft.jsonl"),
           "--out", str(out), "--config", str(tmp_path / "train.yaml")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=540, env=env, cwd=tmp_path)
    wall = time.perf_counter() - start
    print(f"accelerate launch, 2 CPU processes, 2 SFT steps: {wall:.1f} s")
    assert proc.returncode == 0, proc.stderr[-60000:]
    assert "trained sft on 2 process(es), backend gloo" in proc.stderr, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    assert not out.with_suffix(".tmp").exists()
    trained, _ = load_model(tmp_path / "tiny", adapter=out)
    ids = torch.tensor([examples[0]["input_ids"]])
    with torch.no_grad():
        assert not torch.allclose(trained(ids).logits, tiny(ids).logits)


@pytest.mark.timeout(600)
def test_full_dpo_on_two_cpu_processes_through_the_launcher(tmp_path):
    "Full-fine-tuning DPO (reference log-probs precomputed, shared by both processes) via `run_training` + accelerate."
    from optima_nb.trainers import LauncherConfig, run_training
    tiny, _ = tiny_random_model(save_to=tmp_path / "tiny")
    pairs = [{"prompt": [{"role": "user", "content": "Where does Lena live?"}], "chosen": "Oslo.", "rejected": "No idea, sorry."}] * 4
    cfg = TrainConfig(lora=False, max_steps=2, per_device_batch_size=1, logging_steps=1, learning_rate=1e-3, warmup_ratio=0.0)
    out = run_training("dpo", tmp_path / "tiny", pairs, cfg, tmp_path / "model", launcher=LauncherConfig("accelerate", num_processes=2))
    log = (tmp_path / "model.inputs" / "train.log").read_text()
    assert "trained dpo on 2 process(es), backend gloo" in log, log[-3000:]
    assert (out / "config.json").exists() and not (out / "adapter_config.json").exists()
    assert not (tmp_path / "model.tmp.data").exists() and not (tmp_path / "model.tmp").exists()
    trained, _ = load_model(out)
    assert any(not torch.equal(p, q) for p, q in zip(trained.state_dict().values(), tiny.state_dict().values()))
