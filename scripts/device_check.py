"""GPU check of the training and generation path: HF generation and the TRL trainers (SFT, DPO full fine-tuning,
Score-DPO with LoRA) in bf16 on CUDA, on the tiny random model with the real tokenizer. Prints one line per check
and a final `DEVICE CHECK: PASS (n/n)` or `DEVICE CHECK: FAIL (k/n)`; exit status 0 only on pass.

    bash scripts/device_check.sh           # on a GPU machine (needs torch, transformers, peft, accelerate, trl)
    python scripts/device_check.py --cpu   # the same checks in fp32 on CPU (to test this script)
"""
import argparse, sys, tempfile, time, traceback
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="run on CPU in fp32 (no GPU needed)")
    a = p.parse_args(argv)
    import torch
    results, t_start = [], time.time()

    def check(name, fn):
        t0 = time.time()
        try: detail = fn() or ""; ok = True
        except Exception as e: detail, ok = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}", False
        results.append(ok)
        print(f"[{'PASS' if ok else 'FAIL'}] {name} ({time.time() - t0:.1f} s) {detail}", flush=True)

    if not a.cpu and not torch.cuda.is_available():
        print("DEVICE CHECK: FAIL (no CUDA device visible; use --cpu to test the script on CPU)"); return 1
    device = "cpu" if a.cpu else "cuda"
    from optima_nb.backends import GenerationParams, HFBackend
    from optima_nb.trainers import TrainConfig, build_dpo_trainer, own_turn_example, train_dpo, train_sft
    from optima_nb.models import load_model, resolve_dtype, tiny_random_model
    work = Path(tempfile.mkdtemp(prefix="device-check-"))
    _, tok = tiny_random_model(save_to=work / "tiny")
    want = torch.float32 if a.cpu else resolve_dtype("auto", "cuda")

    def generation():
        b = HFBackend.from_pretrained(work / "tiny", device=device, dtype="auto" if not a.cpu else "float32")
        assert next(b.model.parameters()).dtype == want and next(b.model.parameters()).device.type == device
        out = b.generate([[{"role": "user", "content": "Hi"}]] * 4, GenerationParams(max_new_tokens=8))
        assert all(len(r) == 1 and r[0].n_tokens > 0 for r in out)
        return f"dtype {want}, device {device}, 4 x {out[0][0].n_tokens} tokens"
    check("HF generation", generation)

    views = [[{"role": "system", "content": "You are Alice."}, {"role": "user", "content": "Bob: Lena lives in Oslo."},
              {"role": "assistant", "content": "<A>Oslo</A>"}]] * 4
    pairs = [{"prompt": [{"role": "user", "content": "Where does Lena live?"}], "chosen": "Oslo", "rejected": "No idea",
              "chosen_score": s, "rejected_score": 0.0} for s in (1.0, 0.7)]
    fast = dict(max_steps=2, per_device_batch_size=2, logging_steps=1, learning_rate=1e-3, warmup_ratio=0.0)

    def sft():
        out = train_sft(work / "tiny", [own_turn_example(tok, v, 256) for v in views], TrainConfig(**fast), work / "sft")
        assert (out / "adapter_config.json").exists()
        return "LoRA adapter written"
    check("TRL SFT (LoRA, bf16 mixed precision)" if not a.cpu else "TRL SFT (LoRA, fp32)", sft)

    def dpo_full():
        cfg = TrainConfig(**fast, lora=False)
        t = build_dpo_trainer(work / "tiny", pairs, cfg, work / "dpo-probe")
        assert t.ref_model is None and t.precompute_ref_logps, "full fine-tuning must not hold a reference copy"
        assert t.args.bf16 == (not a.cpu), f"bf16={t.args.bf16}"
        del t
        out = train_dpo(work / "tiny", pairs, cfg, work / "dpo-full")
        m, _ = load_model(out)
        return f"full model written ({sum(x.numel() for x in m.parameters())} parameters), no reference copy"
    check("TRL DPO (full fine-tuning, precomputed reference)", dpo_full)

    def score_dpo():
        out = train_dpo(work / "tiny", pairs, TrainConfig(**fast, loss="score"), work / "score-dpo")
        assert (out / "adapter_config.json").exists()
        return "Score-DPO LoRA adapter written"
    check("Score-DPO (LoRA)", score_dpo)

    n, ok = len(results), sum(results)
    print(f"DEVICE CHECK: {'PASS' if ok == n else 'FAIL'} ({ok}/{n}) on {device} in {time.time() - t_start:.0f} s")
    return 0 if ok == n else 1


if __name__ == "__main__": sys.exit(main())
