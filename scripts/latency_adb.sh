#!/usr/bin/env bash
# A latency table measured on an Android device (cream_tf.latency's format), for a search to be
# bounded in that device's milliseconds: every block of a search config's space, and its
# space.latency_calibration whole networks (the table's calibration), converted here, timed there
# by LiteRT's benchmark_model through adb, and the timings made into a table here.
#
#   scripts/latency_adb.sh CONFIG.yaml TABLE.json [THREADS] [PRECISIONS]
#   scripts/latency_adb.sh configs/search/imagenet.yaml tables/pixel8_t1.json 1 float32,int8
#
# Then: python main.py --mode=search --params_override="space.latency_ms=[0,12],space.latency_table=tables/pixel8_t1.json"
#
# Needs: adb with one device attached (or ANDROID_SERIAL set), and LiteRT's benchmark_model for
# the device's ABI (the TensorFlow Lite "benchmark_model" binary from the LiteRT releases, or
# built with `bazel build -c opt --config=android_arm64 //tflite/tools/benchmark:benchmark_model`)
# at $BENCHMARK_MODEL (default ./benchmark_model). Its "Inference (avg)" and "std" are what the
# table records, per file, after --warmup_runs. This script is not run by the project's tests:
# no device is attached where they run. The Python halves it calls are.
set -euo pipefail
config=${1:?usage: $0 CONFIG.yaml TABLE.json [THREADS] [PRECISIONS]}
table=${2:?usage: $0 CONFIG.yaml TABLE.json [THREADS] [PRECISIONS]}
threads=${3:-1}
precisions=${4:-float32,int8}
python=${PYTHON:-python}
benchmark=${BENCHMARK_MODEL:-./benchmark_model}
remote=/data/local/tmp/cream_latency
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$python" -m cream_tf.latency pieces --config_file="$config" --out="$work/pieces" --precisions="$precisions"
adb shell mkdir -p "$remote"
adb push "$benchmark" "$remote/benchmark_model" >/dev/null
adb shell chmod +x "$remote/benchmark_model"
adb push "$work/pieces/." "$remote/" >/dev/null
device="adb: $(adb shell getprop ro.product.manufacturer | tr -d '\r') $(adb shell getprop ro.product.model | tr -d '\r')"
version=$(adb shell "$remote/benchmark_model" --help 2>&1 | tr -d '\r' | grep -m1 -io 'version[^,]*' || true)
: >"$work/timings.txt"
for file in "$work"/pieces/*.tflite; do
  name=$(basename "$file")
  out=$(adb shell "$remote/benchmark_model" --graph="$remote/$name" --num_threads="$threads" \
    --use_xnnpack=true --warmup_runs=20 --num_runs=200 2>&1 | tr -d '\r')
  # Its last "count=200 first=... curr=... min=... max=... avg=123.4 std=5" line: the timed runs
  # (the one before it is the warm-up's).
  line=$(grep -E 'count=[0-9]+ .*avg=' <<<"$out" | tail -1)
  avg=$(grep -o 'avg=[0-9.e+-]*' <<<"$line" | cut -d= -f2)
  std=$(grep -o 'std=[0-9.e+-]*' <<<"$line" | cut -d= -f2)
  count=$(grep -o 'count=[0-9]*' <<<"$line" | cut -d= -f2)
  echo "$name $avg ${std:-0} $count" >>"$work/timings.txt"
  echo "$name: $avg us" >&2
done
adb shell rm -rf "$remote"
"$python" -m cream_tf.latency table --manifest="$work/pieces/manifest.json" --timings="$work/timings.txt" \
  --out="$table" --threads="$threads" --device="$device" --runtime="benchmark_model ${version:-unknown version}"
