#!/usr/bin/env bash
# Every GPU measurement of the open issues in one run, with a short table at the end:
#   1. the benchmark of the lesson's recipe (224 px, ratio 4) in float32 and bfloat16;
#   2. the recipe for 5 epochs on the real data, bfloat16 then float32 (wall time, accuracy);
#   3. a relaunch of (2)'s bfloat16 config in a new workdir: compile time with a warm cache,
#      and whether its first epoch repeats (2)'s bit for bit; then two 1-epoch launches with
#      XLA's --xla_gpu_deterministic_ops: whether they agree, and what the flag costs;
#   4. the width-ratio sweep of the recipe, 5 epochs, bfloat16.
# On a lent machine (no network): first, here, ../shared/tools/device-prep, then run with
# carry [".device"]:
#   site=$(mktemp -d) && python3 -m pip install -q --no-index --no-deps --target "$site" \
#     .device/whl/*.whl && export PYTHONPATH="$site:$PWD" && bash benchmarks/gpu_session.sh
# Environment: DATA_DIR (IDX files, default .device/data), OUT (9 summary files, default /tmp/gpu),
# EXTRA_FLAGS (appended to every command; e.g. tiny sizes for a CPU smoke run), SKIP_SWEEP=1.
set -uo pipefail
data=${DATA_DIR:-.device/data}
out=${OUT:-/tmp/gpu}
runs=$(mktemp -d)
export JAX_COMPILATION_CACHE_DIR="$runs/xla_cache"
export PYTHONUNBUFFERED=1
mkdir -p "$out"
rm -f "$out/wall_seconds.txt"
read -r -a extra <<< "${EXTRA_FLAGS:-}"
recipe=(--config=experiments/d2l_vgg11.py --config.data.source=idx "--config.data.idx_dir=$data")

nvidia-smi -L 2>/dev/null
python3 -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, jax.devices())'

for dtype in float32 bfloat16; do
  echo "== benchmark $dtype"
  python3 -m vgg_flax.benchmark "${recipe[@]}" --data=random "--config.model.dtype=$dtype" \
    "--output=$out/benchmark_$dtype.json" "${extra[@]}"
done

for dtype in bfloat16 float32; do
  echo "== recipe, 5 epochs, $dtype"
  start=$EPOCHREALTIME
  python3 -m vgg_flax.main "${recipe[@]}" "--config.model.dtype=$dtype" \
    "--workdir=$runs/d2l_$dtype" "${extra[@]}"
  python3 -c "print('$dtype', $EPOCHREALTIME - $start)" | tee -a "$out/wall_seconds.txt"
  cp "$runs/d2l_$dtype/results.json" "$out/results_$dtype.json"
  cp "$runs/d2l_$dtype/metrics.jsonl" "$out/metrics_$dtype.jsonl"
done

same_first_epoch() {  # Whether two workdirs' first epochs agree bit for bit.
  python3 - "$@" <<'PY'
import json, sys
label, *workdirs = sys.argv[1:]
first = [json.loads(open(f'{workdir}/metrics.jsonl').readline()) for workdir in workdirs]
keys = ('train_loss', 'train_accuracy', 'test_loss', 'test_accuracy')
print(f'{label}: epoch 1 bitwise equal:', all(first[0][k] == first[1][k] for k in keys),
      {k: (first[0][k], first[1][k]) for k in keys},
      'examples/sec', [round(f['examples_per_sec']) for f in first])
PY
}

echo "== relaunch with a warm compilation cache (1 epoch, new workdir)"
python3 -m vgg_flax.main "${recipe[@]}" --config.model.dtype=bfloat16 \
  --config.train.num_epochs=1 "--workdir=$runs/relaunch" "${extra[@]}" >/dev/null
python3 -c "import json; print('compile_seconds warm:', json.load(open('$runs/relaunch/results.json'))['compile_seconds'])"
same_first_epoch "relaunch vs first launch" "$runs/d2l_bfloat16" "$runs/relaunch" \
  | tee "$out/reproducibility.txt"

echo "== XLA's deterministic GPU ops: two 1-epoch launches"
for run in deterministic1 deterministic2; do
  XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_deterministic_ops=true" python3 -m vgg_flax.main \
    "${recipe[@]}" --config.model.dtype=bfloat16 --config.train.num_epochs=1 \
    "--workdir=$runs/$run" "${extra[@]}" >/dev/null
done
same_first_epoch "--xla_gpu_deterministic_ops, two launches" "$runs/deterministic1" \
  "$runs/deterministic2" | tee -a "$out/reproducibility.txt"

if [ -z "${SKIP_SWEEP:-}" ]; then
  echo "== ratio sweep, 5 epochs, bfloat16"
  python3 -m vgg_flax.sweep --config=experiments/ratio_sweep.py --config.data.source=idx \
    "--config.data.idx_dir=$data" --config.model.dtype=bfloat16 "--workdir=$runs/ratio" \
    "${extra[@]}"
  cp "$runs/ratio/results.md" "$out/sweep_results.md"
fi

echo "== summary"
python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
walls = dict(line.split() for line in open(os.path.join(out, 'wall_seconds.txt')))
for dtype in ('float32', 'bfloat16'):
    b = json.load(open(os.path.join(out, f'benchmark_{dtype}.json')))
    r = json.load(open(os.path.join(out, f'results_{dtype}.json')))
    wall = walls[dtype]
    print(f"{dtype:>9}: step {b['step']['images_per_sec']['median']:,.0f} img/s, loop "
          f"{b['loop']['images_per_sec']:,.0f} img/s, eval {b['loop']['eval_images_per_sec']:,.0f} "
          f"img/s, MFU {b['mfu'] or 0:.1%}, peak mem {(b['peak_memory_bytes'] or 0) / 2**30:.1f} GiB; "
          f"5 epochs: test acc {r['test_accuracy']:.4f} (best {r['best_test_accuracy']:.4f}), "
          f"{r['examples_per_sec']:,.0f} img/s, train+eval {r['wall_seconds']:.1f} s, "
          f"process wall {float(wall):.1f} s incl. start-up, "
          f"compile {r['compile_seconds']:.1f} s, {r['device_kind']}")
PY
cat "$out/reproducibility.txt"
