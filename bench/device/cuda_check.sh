#!/usr/bin/env bash
# sdrpc on a GPU machine, offline: doctor, a real CUDA build of ggml-rpc-server for the pins of
# llama-cpp-python 0.3.36 (llama.cpp 0c1e5709, RPC 7.0.0) with GGML_MAX_NAME=160, verified by
# sdrpc-build's handshake; then sdrpc-launch + sdrpc-check + sdrpc-bench against it, and a real
# ggml client (llama.cpp's test-backend-ops, tests/vulkan.py's rpc-ops) computing through RPC.
#
# The GPU machine is offline: $CARRY (default .devcarry) holds whl/ (platformdirs, GitPython,
# gitdb, smmap wheels: `pip download --no-deps --only-binary=:all: -d whl ...`) and src.tar.gz
# (fleet.hostbuild.source_tar of the commit's tree: what sdrpc up ships to a building host).
# Run from the repository root: `bash bench/device/cuda_check.sh`; results in $OUT.
# Results of 2026-11-26 (H200, CUDA 13.0): bench/results/cuda-h200-2026-11-26/.
set -uo pipefail
B=${BACKEND:-cuda}; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
C=0c1e57098bba43ac29e6e3b677cdceebdd22334f
D=${CARRY:-.devcarry}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $D/whl/*.whl || exit 3
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1 PIP_NO_INDEX=1 SDRPC_CACHE_DIR=/tmp/sdc
mkdir -p /tmp/sdc && tar -xzf $D/src.tar.gz -C /tmp/sdc
{ uname -a; nproc; nvidia-smi -L; nvcc --version | tail -2; cmake --version | head -1; python3 --version; } > "$OUT/machine.txt" 2>&1
python3 -m sdrpc_build.cli.main doctor --backend "$B" --json > "$OUT/doctor.json" 2>&1
echo "doctor rc=$?"
t0=$(date +%s)
DEFS=(); [ "$B" = cuda ] && DEFS=(-D CMAKE_CUDA_ARCHITECTURES=90 -D GGML_CUDA_FA=OFF)
timeout 480 python3 -m sdrpc_build.cli.build --llama-commit $C --max-name 160 --backend "$B" \
  --llama-sdist llama-cpp-python==0.3.36 "${DEFS[@]}" --json > "$OUT/build.json" 2> "$OUT/build.err"
rc=$?; echo "build rc=$rc in $(( $(date +%s) - t0 )) s"; tail -5 "$OUT/build.err"
[ $rc = 0 ] || { cp /tmp/sdc/builds/*/build/build.log "$OUT/build.log" 2>/dev/null; exit 4; }
python3 -m sdrpc_build.cli.launch --llama-commit $C --max-name 160 --backend "$B" -p 50052 \
  --detach --instance gpu > "$OUT/launch.txt" 2>&1; echo "launch rc=$?"
python3 -m sdrpc_build.cli.check --expect-max-name 160 --expect-proto 7.0.0 --json 127.0.0.1:50052 > "$OUT/check.json" 2>&1; echo "check rc=$?"
python3 -m sdrpc_build.cli.bench --json 127.0.0.1:50052 > "$OUT/bench.json" 2>&1; echo "bench rc=$?"
python3 -m sdrpc_build.cli.launch status --instance gpu > "$OUT/status.txt" 2>&1
# a real ggml client computes on the server's device through RPC (llama.cpp's test-backend-ops)
if [ $(( $(date +%s) - t0 )) -lt 470 ]; then
  mkdir -p /tmp/ops/src && python3 - <<'PY'
import sys; sys.path[:0] = ["tests"]
import vulkan
from pathlib import Path
Path("/tmp/ops/src/rpc-ops.cpp").write_text(vulkan._RPC_OPS_CPP)
Path("/tmp/ops/src/CMakeLists.txt").write_text(vulkan._RPC_OPS_CMAKE)
PY
  T=/tmp/sdc/sources/$C
  timeout 120 cmake -S /tmp/ops/src -B /tmp/ops/b -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_TREE=$T \
    -DSDRPC_MAX_NAME=160 -DCMAKE_RUNTIME_OUTPUT_DIRECTORY=/tmp/ops/bin > /tmp/ops/log 2>&1 &&
  timeout 150 cmake --build /tmp/ops/b --target rpc-ops >> /tmp/ops/log 2>&1
  echo "rpc-ops build rc=$?"
  timeout 120 /tmp/ops/bin/rpc-ops --rpc 127.0.0.1:50052 -b RPC0 -o \
    "ADD(type=f32,ne=[10,5,4,3],nr=[2,2,2,2],nf=1,perm1=1,src_overlap=0),MUL_MAT(type_a=f32,type_b=f32,m=16,n=32,k=32,bs=[1,1],nr=[1,1],per=[0,1,2,3],k_v=64,o=3)" \
    > "$OUT/ops.txt" 2>&1; echo "ops rc=$?"; tail -8 "$OUT/ops.txt"
fi
python3 -m sdrpc_build.cli.launch stop --instance gpu >> "$OUT/status.txt" 2>&1; echo "stop rc=$?"
cat "$OUT/check.json" | head -60
