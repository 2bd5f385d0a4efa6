#!/bin/bash
# The regime runs of the verdict-regime issue, one after the other, interleaved by seed so that a stop leaves
# whole seeds; every run resumes from its last evaluation when this script is started again.
#   bash validate/reports/smollm2-135m-instruct-cpu/regime/run_all.sh [OUT]
set -u
R=${1:-validate/reports/smollm2-135m-instruct-cpu/regime}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} OMP_WAIT_POLICY=PASSIVE
for seed in 0 1 2; do
  for algo in dpo dpo-pull-only sft; do
    ( time ldyn validate run --preset cpu --algo $algo --seed $seed --quiet --out $R/$algo-s$seed ) \
      >> $R/$algo-s$seed.log 2>&1 || echo "$algo seed $seed: exit $?" >> $R/failures.log
  done
done
for algo in onpolicy-dpo onpolicy-dpo-pull-only extend; do   # as time allows: one seed
  ( time ldyn validate run --preset cpu --algo $algo --seed 0 --quiet --out $R/$algo-s0 ) \
    >> $R/$algo-s0.log 2>&1 || echo "$algo seed 0: exit $?" >> $R/failures.log
done
ldyn validate report $R/*-s[0-9] --out $R
