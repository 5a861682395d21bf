#!/usr/bin/env bash
# Every CPU figure of the "sparsity that pays" table on this machine, in one command, both builds: the native
# one and "AVX2 only" (our kernel built for x86-64-v3, MKL, oneDNN and ATen held to AVX2, so an AVX-512 machine
# stands in for an AVX2 one). Run from the repository root, in the background (about 30 minutes on 2 cores):
#
#   bash results/cpu_training/measure.sh TAG            # e.g. intel167; writes results/cpu_training/TAG_<date>/
#   QUICK=1 bash results/cpu_training/measure.sh TAG    # a few minutes: fewer steps and repeats, to try it
#
# Each file starts with the date, the CPU, the build and the commit; a step that fails is noted and the rest go on.
set -uo pipefail
cd "$(dirname "$0")/../.."
tag=${1:?usage: bash results/cpu_training/measure.sh TAG}
out="results/cpu_training/${tag}_$(date -u +%Y%m%d_%H%M)"
mkdir -p "$out"
cpu=$(python -c "from tools.kernel_bench import cpu_model; print(cpu_model())")
commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo "+uncommitted")
avx2_only=(SPDF_CPU_ARCH=x86-64-v3 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2)
if [ "${QUICK:-0}" = 1 ]; then
  steps=(--steps=2 --warmup=1) repeats=2 rounds=1 tokens=8
else
  steps=(--steps=6 --warmup=2) repeats=5 rounds=3 tokens=48
fi

run() {  # run FILE BUILD CMD...: CMD's output into $out/FILE, under a header
  local file=$1 build=$2; shift 2
  local env=(); [ "$build" = avx2only ] && env=("${avx2_only[@]}")
  echo "$(date -u '+%H:%M:%S') $file"
  { echo "# $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $cpu, torch $(python -c 'import torch; print(torch.__version__)'), build $build${env:+ (${env[*]})}, commit $commit"
    echo "# $*"
    uptime
    env "${env[@]}" timeout 1200 "$@" || echo "FAILED: exit $?"
  } > "$out/$file" 2>&1
}

for build in avx2only native; do
  run "kernels_$build.txt" $build python -m tools.kernel_bench --sparsity 0.75,0.9 --repeats $repeats --no_gen \
    --json "$out/kernels_$build.json"
  for s in 0.75 0.9; do
    run "step_s${s}_$build.txt" $build python bench.py --device=cpu --model=gpt2-small --block_size=256 --batch_size=4 \
      --sparsity=$s --kernel=csr --memory=True "${steps[@]}" --json="$out/step_s${s}_$build.json"
  done
  run "generation_$build.txt" $build python results/cpu_training/gen_speed.py --sparsity=0.75,0.9 --rounds=$rounds
  run "in_model_$build.txt" $build python -m tools.kernels.in_model --tokens $tokens --repeats $repeats
  run "fused_qkv_$build.txt" $build python -m tools.kernels.fused_qkv --tokens $tokens --repeats $repeats
done
grep -h -E "speed-up|FAILED" "$out"/*.txt
echo "wrote $out"
