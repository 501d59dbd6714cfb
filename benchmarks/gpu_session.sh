#!/usr/bin/env bash
# The GPU measurements of the recipe in one run, most important first, each summarised in one
# line of $OUT/summary.txt as soon as it is measured (a run cut short keeps what it did):
#   bfloat16        the benchmark of the lesson's recipe (224 px, ratio 4, batch 128) in bfloat16;
#   peer            PyTorch's step of the same network, batch and dtype on the same GPU
#                   (benchmarks/torch_reference.py: eager and torch.compile, NCHW and
#                   channels_last), for the recipe and for native_28px.py, against ours;
#   profile         a profiler trace of that step: how busy the GPU is, which ops take the time;
#   lax_first_conv  the same step with the first conv through cuDNN instead of the shifted sum
#                   that `model.first_conv='auto'` picks on a GPU;
#   train_bfloat16  the recipe for 5 epochs on the real data in bfloat16: accuracy, wall time,
#                   compile time; then whether the speed and accuracy targets are met;
#   time_to_95      experiments/time_to_95.py, three seeds: training seconds to 0.95 test accuracy
#                   (compile and evaluation apart), each and their mean;
#   relaunch        the same config again in a new workdir: compile time with a warm cache, and
#                   whether its first epoch repeats the first launch's bit for bit;
#   population      quick.py's and native_28px.py's step for one seed and for a population of 8
#                   (`config.population_size`, one vmapped step): images/s of all members against one
#                   member's (target >= 4x);
#   best_224        best_32px.py's recipe at 224 px in bfloat16, three seeds while time is left:
#                   accuracy (mean, std) and time per seed (target: mean >= 0.96);
#   train_float32   the recipe for 5 epochs in float32 (bfloat16's accuracy beside float32's);
#   float32         the float32 benchmark (step only);
#   batch512        the bfloat16 step at batch 512: whether batch 128 leaves the GPU waiting on
#                   kernel launches;
#   per_call        steps run 16 to a call under one compiled loop (`train.steps_per_call`), for
#                   the recipe in bfloat16 and for quick.py (32 px, where a GPU step is tiny);
#   deterministic   two 1-epoch launches with XLA's --xla_gpu_deterministic_ops: whether they
#                   agree, and what the flag costs;
#   sweep           the width-ratio sweep of the lesson's setting (experiments/ratio_sweep.py:
#                   224 px, 5 epochs, ratios 1-16, 3 seeds each) in bfloat16, each ratio's seeds
#                   as one population (--population), while time is left ($SWEEP_CONFIG in its
#                   place, e.g. a smaller sweep for a smoke run).
#   DATA_DIR=path/to/idx-files bash benchmarks/gpu_session.sh
# Environment: DATA_DIR (the four Fashion-MNIST IDX files; required), OUT (summary and
# JSON files, default /tmp/gpu), STAGES (the stages to run, space-separated; default all),
# BUDGET_SECONDS (no stage starts after this many seconds, default 540), EXTRA_FLAGS (appended to
# every command; e.g. tiny sizes for a CPU smoke run), BENCH_FLAGS (appended to every benchmark's,
# e.g. fewer steps), PEER_FLAGS (appended to the PyTorch peer's;
# e.g. --device=cpu --steps=1 --repeats=1 --warmup=1 for a smoke run).
set -uo pipefail
data=${DATA_DIR:?set DATA_DIR to the directory of the four Fashion-MNIST IDX files}
out=${OUT:-/tmp/gpu}
budget=${BUDGET_SECONDS:-540}
runs=$(mktemp -d)
export JAX_COMPILATION_CACHE_DIR="$runs/xla_cache"
export PYTHONUNBUFFERED=1
mkdir -p "$out"
summary="$out/summary.txt"
read -r -a extra <<< "${EXTRA_FLAGS:-}"
read -r -a peer_extra <<< "${PEER_FLAGS:-}"
read -r -a bench_extra <<< "${BENCH_FLAGS:-}"
d2l=experiments/d2l_vgg11.py
data_flags=(--config.data.source=idx "--config.data.idx_dir=$data")

{
  nvidia-smi -L 2>/dev/null
  python3 -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, jax.devices())'
} | tee "$summary"

due() {  # STAGE: whether STAGE runs: it is in $STAGES (or that is unset) and time is left.
  [[ -z "${STAGES:-}" || " $STAGES " == *" $1 "* ]] || return 1
  if ((SECONDS > budget)); then
    echo "$1: not started, ${SECONDS} s is past BUDGET_SECONDS=$budget" | tee -a "$summary"
    return 1
  fi
}

failed() {  # WHAT: a line of the summary for a stage that exited non-zero (its log says why).
  echo "$1: FAILED (exit status $?; see the log above)" | tee -a "$summary"
}

benchmark() {  # NAME CONFIG FLAG...: the benchmark on random data, then its summary line.
  local name=$1 config=$2
  shift 2
  echo "== benchmark $name"
  python3 -m vgg_flax.benchmark "--config=$config" --data=random "$@" \
    "--output=$out/benchmark_$name.json" "${extra[@]}" "${bench_extra[@]}" \
    || { failed "benchmark $name"; return; }
  python3 - "$name" "$out/benchmark_$name.json" <<'PY' | tee -a "$summary"
import json, sys
name, path = sys.argv[1:]
b = json.load(open(path))
step, loop, looped = b['step']['images_per_sec'], b['loop'], b['step']['compiled_loop']
parts = [f"first conv {b['config']['first_conv']}",
         f"step {step['median']:,.0f} img/s ({step['min']:,.0f}-{step['max']:,.0f})"]
if looped:
    rate = looped['images_per_sec']['median']
    parts.append(f"{looped['steps_per_call']} steps per call {rate:,.0f} img/s "
                 f"({rate / step['median']:.0%} of step, "
                 f"compile {looped['compile_seconds']:.1f} s)")
if loop:
    parts += [f"loop {loop['images_per_sec']:,.0f} img/s ({b['loop_vs_step']:.0%} of step)",
              f"eval {loop['eval_images_per_sec']:,.0f} img/s"]
parts += [f"MFU {b['mfu'] or 0:.1%}", f"peak mem {(b['peak_memory_bytes'] or 0) / 2**30:.1f} GiB",
          f"compile {b['step']['compile_seconds']:.1f} s", b['environment']['device_kind']]
profile = b['step'].get('profile')
if profile and profile['ops']:
    total = sum(op['total_us'] for op in profile['ops'])
    parts.append(f"profile: busy {profile['busy_us'] / profile['span_us']:.0%}, "
                 f"{profile['busy_us'] / profile['calls'] / 1e3:.2f} ms per step, top ops " +
                 ', '.join(f"{op['op']} ({op['kernel'][:30]}) {op['total_us'] / total:.0%}"
                           for op in profile['ops'][:3]))
elif profile:
    parts.append('profile: no device ops traced')
print(f"benchmark {name}: " + ', '.join(parts))
PY
}

train() {  # NAME FLAG...: a training run (of $TRAIN_CONFIG, default the lesson's recipe) in a
  # new workdir, then its line of the summary.
  local name=$1
  shift
  echo "== train $name"
  local start=$EPOCHREALTIME
  python3 -m vgg_flax.main "--config=${TRAIN_CONFIG:-$d2l}" "${data_flags[@]}" \
    "--workdir=$runs/$name" "$@" "${extra[@]}" \
    || { failed "train $name"; return; }
  python3 - "$name" "$runs/$name" "$EPOCHREALTIME" "$start" <<'PY' | tee -a "$summary"
import json, sys
name, workdir, end, start = sys.argv[1:]
r = json.load(open(f'{workdir}/results.json'))
print(f"train {name}: {r['epochs']} epochs, test acc {r['test_accuracy']:.4f} "
      f"(best {r['best_test_accuracy']:.4f}), {r['examples_per_sec']:,.0f} img/s, "
      f"train+eval {r['wall_seconds']:.1f} s, process wall {float(end) - float(start):.1f} s "
      f"incl. start-up, compile {r['compile_seconds']:.1f} s, {r['device_kind']}")
PY
  cp "$runs/$name/results.json" "$out/results_$name.json"
  cp "$runs/$name/metrics.jsonl" "$out/metrics_$name.jsonl"
  cp "$runs/$name/steps.jsonl" "$out/steps_$name.jsonl"
}

peer() {  # NAME: PyTorch's variants of benchmark NAME's network and step, against ours.
  local name=$1
  echo "== PyTorch peer of $name"
  python3 benchmarks/torch_reference.py "--like=$out/benchmark_$name.json" --steps=20 \
    "--output=$out/torch_$name.json" "${peer_extra[@]}" || { failed "peer $name"; return; }
  python3 - "$name" "$out/benchmark_$name.json" "$out/torch_$name.json" <<'PY' | tee -a "$summary"
import json, sys
name, ours_path, torch_path = sys.argv[1:]
ours = json.load(open(ours_path))['step']['images_per_sec']['median']
peer = json.load(open(torch_path))
best = peer['variants'][peer['best']]['median']
variants = ', '.join(f"{v} {r['median']:,.0f}" for v, r in peer['variants'].items())
print(f"peer {name}: PyTorch {peer['torch']} on {peer['device']}: {variants} img/s; ours "
      f"{ours:,.0f} img/s = {ours / best:.2f}x its best ({peer['best']}); target >= 1.3x: "
      f"{'met' if ours >= 1.3 * best else 'NOT met'}")
PY
}

seed_spread() {  # NAME: test accuracy over the seeds of train runs NAME_seedN, and their times.
  python3 - "$1" "$out" <<'PY' | tee -a "$summary"
import glob, json, statistics, sys
name, out = sys.argv[1:]
runs = [json.load(open(p)) for p in sorted(glob.glob(f'{out}/results_{name}_seed*.json'))]
accs = [r['test_accuracy'] for r in runs]
if not runs:
    sys.exit(f'{name}: no seed finished')
std = f', std {statistics.stdev(accs):.4f}' if len(accs) > 1 else ''
print(f"{name}: {len(runs)} seeds, test acc {[round(a, 4) for a in accs]}, mean "
      f"{statistics.fmean(accs):.4f}{std}; wall {[round(r['wall_seconds']) for r in runs]} s each "
      f"(target mean >= 0.96: {'met' if statistics.fmean(accs) >= 0.96 else 'NOT met'})")
PY
}

population_gain() {  # CONFIG: a population of 8's images/s (all members) against one seed's.
  python3 - "$1" "$out/benchmark_$1_seed.json" "$out/benchmark_$1_population_8.json" <<'PY' \
    | tee -a "$summary"
import json, os, sys
name, one_path, eight_path = sys.argv[1:]
if not (os.path.exists(one_path) and os.path.exists(eight_path)):
    sys.exit(f'population {name}: not measured (a benchmark failed)')
one, eight = (json.load(open(p))['step']['images_per_sec']['median'] for p in (one_path, eight_path))
print(f"population {name}: 8 members {eight:,.0f} img/s, one seed {one:,.0f}: {eight / one:.1f}x "
      f"(target >= 4x: {'met' if eight >= 4 * one else 'NOT met'})")
PY
}

same_first_epoch() {  # LABEL WORKDIR WORKDIR: whether the first epochs agree bit for bit.
  python3 - "$@" <<'PY' | tee -a "$summary"
import json, sys
label, *workdirs = sys.argv[1:]
first = [json.loads(open(f'{workdir}/metrics.jsonl').readline()) for workdir in workdirs]
keys = ('train_loss', 'train_accuracy', 'test_loss', 'test_accuracy')
print(f'{label}: epoch 1 bitwise equal:', all(first[0][k] == first[1][k] for k in keys),
      {k: (first[0][k], first[1][k]) for k in keys},
      'examples/sec', [round(f['examples_per_sec']) for f in first])
PY
}

targets() {  # Whether the targets are met, from the files of the bfloat16 benchmark and run.
  python3 - "$out" <<'PY' | tee -a "$summary"
import json, os, sys
out = sys.argv[1]
def load(name):
    path = os.path.join(out, name)
    return json.load(open(path)) if os.path.exists(path) else None
bench, run = load('benchmark_bfloat16.json'), load('results_bfloat16.json')
if bench:
    rate = bench['step']['images_per_sec']['median']
    print(f"target (H100/H200, bfloat16): >= 40,000 train img/s: {rate:,.0f} on "
          f"{bench['environment']['device_kind']}: {'met' if rate >= 40_000 else 'NOT met'}")
if run:
    ok = run['wall_seconds'] <= 20 and run['test_accuracy'] >= 0.90
    print(f"target: 5 epochs with evaluation <= 20 s at the recipe's accuracy (>= 0.90, "
          f"D2L's published runs): {run['wall_seconds']:.1f} s, test acc "
          f"{run['test_accuracy']:.4f}, compile {run['compile_seconds']:.1f} s: "
          f"{'met' if ok else 'NOT met'}")
PY
}

due bfloat16 && benchmark bfloat16 "$d2l" --config.model.dtype=bfloat16
if due peer; then
  benchmark native_28px experiments/native_28px.py --config.model.dtype=bfloat16 --loop_steps=0
  if python3 -c 'import torch' 2>/dev/null; then
    for name in bfloat16 native_28px; do
      [ -f "$out/benchmark_$name.json" ] && peer "$name"
    done
  else
    echo "peer: not run: this python has no torch" | tee -a "$summary"
  fi
fi
due profile && benchmark bfloat16_profile "$d2l" --config.model.dtype=bfloat16 --loop_steps=0 \
  --repeats=1 --steps=10 "--profile_dir=$out/profile_bfloat16"
due lax_first_conv && benchmark bfloat16_lax_first_conv "$d2l" --config.model.dtype=bfloat16 \
  --config.model.first_conv=lax --loop_steps=0
if due train_bfloat16; then
  train bfloat16 --config.model.dtype=bfloat16
  targets
fi
if due time_to_95; then
  for seed in 0 1 2; do
    TRAIN_CONFIG=experiments/time_to_95.py train "time_to_95_seed$seed" "--config.seed=$seed"
  done
  python3 - "$out" <<'PY' | tee -a "$summary"
import json, os, statistics, sys
out = sys.argv[1]
runs = [json.load(open(os.path.join(out, f'results_time_to_95_seed{s}.json')))
        for s in range(3) if os.path.exists(os.path.join(out, f'results_time_to_95_seed{s}.json'))]
times = [r['time_to_target'] and r['time_to_target']['train_seconds'] for r in runs]
reached = [t for t in times if t is not None]
mean = f'{statistics.fmean(reached):.1f} s' if len(reached) == len(runs) and runs else 'n/a'
print(f"time_to_95: {len(runs)} seeds, training seconds to 0.95 test acc "
      f"{[None if t is None else round(t, 1) for t in times]}, mean {mean} (target <= 10 s: "
      f"{'met' if mean != 'n/a' and statistics.fmean(reached) <= 10 else 'NOT met'}); final "
      f"test acc {[round(r['test_accuracy'], 4) for r in runs]}; compile "
      f"{[round(r['compile_seconds'], 1) for r in runs]} s")
PY
fi
if due relaunch; then
  train relaunch --config.model.dtype=bfloat16 --config.train.num_epochs=1 >/dev/null
  same_first_epoch "relaunch vs first launch (warm cache)" "$runs/bfloat16" "$runs/relaunch"
fi
if due population; then
  for config in quick native_28px; do
    benchmark "${config}_seed" "experiments/$config.py" --loop_steps=0
    benchmark "${config}_population_8" "experiments/$config.py" --config.population_size=8 --loop_steps=0
    population_gain "$config"
  done
fi
if due best_224; then
  for seed in 0 1 2; do
    ((SECONDS > budget)) && break
    TRAIN_CONFIG=experiments/best_32px.py train "best_224_seed$seed" --config.seed=$seed \
      --config.data.image_size=224 --config.model.dtype=bfloat16
  done
  seed_spread best_224
fi
due train_float32 && train float32 --config.model.dtype=float32
due float32 && benchmark float32 "$d2l" --config.model.dtype=float32 --loop_steps=0
due batch512 && benchmark bfloat16_batch512 "$d2l" --config.model.dtype=bfloat16 \
  --config.train.batch_size=512 --loop_steps=0
if due per_call; then
  benchmark bfloat16_16_per_call "$d2l" --config.model.dtype=bfloat16 \
    --config.train.steps_per_call=16 --steps=64
  benchmark quick_16_per_call experiments/quick.py --config.train.steps_per_call=16 --steps=64
fi
if due deterministic; then
  for run in deterministic1 deterministic2; do
    XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_deterministic_ops=true" train "$run" \
      --config.model.dtype=bfloat16 --config.train.num_epochs=1 >/dev/null
  done
  same_first_epoch "--xla_gpu_deterministic_ops, two launches" "$runs/deterministic1" \
    "$runs/deterministic2"
fi

if due sweep; then
  sweep=(python3 -m vgg_flax.sweep "--config=${SWEEP_CONFIG:-experiments/ratio_sweep.py}" "${data_flags[@]}"
         --config.model.dtype=bfloat16 --population "--workdir=$runs/ratio" "${extra[@]}")
  # One command trains every ratio's seeds as a population; past the budget, SIGTERM makes the
  # population in training save and the sweep stop, and the report counts what is unfinished.
  echo "== ratio sweep"
  timeout --signal=TERM "$((budget > SECONDS ? budget - SECONDS : 1))" "${sweep[@]}" \
    || echo "sweep: stopped (status $?) at ${SECONDS} s" | tee -a "$summary"
  "${sweep[@]}" --report >/dev/null  # Exits non-zero while points are missing.
  cat "$runs/ratio/results.md" >> "$summary"
fi

echo "== summary (${SECONDS} s)"
cat "$summary"
