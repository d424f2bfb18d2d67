#!/usr/bin/env bash
# The shipped 4-step nano student (assets/nano/student) in one command, from a fresh checkout:
#
#   bash recipes/nano-student.sh [OUT]        (default OUT: runs/nano-student)
#
# Two runs of configs/nano-ladd-8k.yaml that differ only in the regression weight (0.5, the preset's, and 0.25),
# averaged into one student (ladd soup): the average is more aligned at 2 and 4 steps than either run (two seeds,
# docs/experiments/student-gap.md, session 54). On 2 CPU cores: ~42 min making the 8,192 teacher pairs (once,
# shared by both runs), ~30 min per run, seconds for the average. Every step resumes: re-run the same command
# after an interruption. The student is OUT/soup (the shipped one was written with `ladd soup ... --out
# assets/nano/student --overwrite`, which keeps the paths to the teacher and the VAE relative to the folder).
set -euo pipefail
OUT=${1:-runs/nano-student}
ladd distill --config configs/nano-ladd-8k.yaml --no-eval paths.run_dir="$OUT/half"
ladd distill --config configs/nano-ladd-8k.yaml --no-eval paths.run_dir="$OUT/quarter" ladd.loss.regression_weight=0.25
ladd soup "$OUT/half/export" "$OUT/quarter/export" --out "$OUT/soup"
python benchmarks/student_eval.py --protocol val --out "$OUT/val" -- soup="$OUT/soup" half="$OUT/half/export" \
    quarter="$OUT/quarter/export"
