#!/usr/bin/env bash
# What XLA's CPU backend needs to train the lesson's net fast: the compiled train step of
# VGG-11 at ratio 4, 224 px, batch 32, under several XLA flag sets, next to PyTorch's eager step.
#   TORCH_PYTHON=/path/to/python-with-torch bash benchmarks/cpu_study.sh [--config.FIELD=VALUE ...]
# Prints one line per variant (median images/sec of the step alone, min-max); the arguments go
# to every vgg_flax.benchmark run.
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
common=(--config=experiments/d2l_vgg11.py --config.train.batch_size=32 --steps=3 --repeats=3
        --warmup=1 --loop_steps=0)
ynn=--xla_cpu_experimental_ynn_fusion_type
variants=(
  "no flags|"
  "YNN dot (CLI default)|$ynn=dot"
  "YNN dot + conv|$ynn=dot,individual_convolution"
  "YNN conv|$ynn=individual_convolution"
  "YNN dot + eltwise|$ynn=dot,eltwise"
  "YNN dot + reduce|$ynn=dot,reduce"
  "YNN dot + XNN graph|$ynn=dot --xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY"
  "oneDNN custom calls|--xla_cpu_experimental_onednn_custom_call=true"
  "oneDNN|--xla_cpu_use_onednn=true"
  "XNNPACK|--xla_cpu_use_xnnpack=true"
  "fast math|--xla_cpu_enable_fast_math=true"
)
for variant in "${variants[@]}"; do
  name=${variant%%|*}
  flags=${variant#*|}
  # Exactly these flags: the CLIs' own CPU tuning would add YNN for dots to each.
  line=$(VGG_FLAX_CPU_TUNING=0 XLA_FLAGS="$flags" "$python" -m vgg_flax.benchmark "${common[@]}" "$@" 2>&1 |
         grep 'train step alone' || echo 'failed')
  printf '%-22s %-60s %s\n' "$name" "${flags:-(none)}" "${line#train step alone}"
done
if [ -n "${TORCH_PYTHON:-}" ]; then
  "$TORCH_PYTHON" benchmarks/torch_reference.py --device=cpu --batch_size=32 --steps=3 \
    --repeats=3 --variants=eager,eager_channels_last
fi
