#!/usr/bin/env bash
# GPU check (<= 8 minutes on one GPU): HF generation and the TRL trainers in bf16 on CUDA with the tiny model.
# Run from the repository root on a machine with torch, transformers, peft, accelerate and trl; prints a PASS/FAIL line.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
timeout 480 "${PYTHON:-python3}" scripts/device_check.py "$@"
