#!/bin/bash
# The regime runs of issue 30 (pre-registered in COMMANDS.md), one after the other, interleaved by seed so that a
# stop leaves whole seeds; every run resumes from its last evaluation when this script is started again.
#   bash validate/reports/smollm2-135m-instruct-cpu/regime/run_all.sh [OUT]
set -u
R=${1:-validate/reports/smollm2-135m-instruct-cpu/regime}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} OMP_WAIT_POLICY=PASSIVE
one() {   # algo seed
  ( time ldyn validate run --preset cpu-regime --algo $1 --seed $2 --quiet --out $R/$1-s$2 ) \
    >> $R/$1-s$2.log 2>&1 || echo "$1 seed $2: exit $?" >> $R/failures.log
}
for seed in 0 1 2; do
  for algo in dpo dpo-pull-only sft; do one $algo $seed; done
done
for algo in onpolicy-dpo onpolicy-dpo-pull-only extend; do one $algo 0; done   # as time allows: one seed
ldyn validate report $R/*-s[0-9] --out $R
