#!/usr/bin/env bash
# 在没有 GPU 的机器上编译本书的 CUDA 版本（测试、实验命令、基准），打成一个可以带到 GPU 机器上运行的包。
#
# 用法（仓库根目录）：bash code/scripts/cuda-build.sh
#   环境变量：CUDA_COMPUTE_CAP（默认 90，即 Hopper：H100/H200；A100 用 80，RTX 4090 用 89）
#             LLM_BOOK_CUDA（CUDA 工具的缓存目录，默认 ~/.cache/llm-book/cuda-13.0）
# 结果：target/cuda/bundle/（约几十 MB）：bin/llm-book、tests/cuda、benches/cuda_step、stubs/、run-gpu.sh、manifest.txt。
# 在 GPU 机器上（不需要 Rust，只要驱动与 CUDA 运行库）：bash target/cuda/bundle/run-gpu.sh；在这台机器上演练：加 --dry-run。
#
# 需要什么、从哪里来：
#   - nvcc（把 dfdx 的 .cu 内核编译成 PTX）与 CUDA 头文件：PyPI 上 NVIDIA 发布的 wheel（nvidia-cuda-nvcc 等 13.0 版，下面核对 SHA-256）；
#   - 链接用的 libcuda、libcublas、libcublasLt、libnvrtc：只需要符号名，由 code/scripts/cuda_stubs.py 按 cudarc 的绑定生成“桩”
#     （与 NVIDIA 工具包里 lib64/stubs/libcuda.so 同样的用途）；真正的库在 GPU 机器上加载。
#   - dfdx 的 build.rs 原来一定要问 nvidia-smi：本书的补丁让它在设了 CUDA_COMPUTE_CAP 时不问（code/vendor/README.md）。
# nvcc 13.0 生成的 PTX 要求 GPU 机器的驱动支持 CUDA 13.0（R580 及以上）；run-gpu.sh 会检查并说明。
set -euo pipefail
cd "$(dirname "$0")/../.."
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
cache="${LLM_BOOK_CUDA:-$HOME/.cache/llm-book/cuda-13.0}"
root="$cache/nvidia/cu13"
target=target/cuda
bundle="$target/bundle"

say() { printf '\n==> %s\n' "$1"; }

say "CUDA 13.0 的 nvcc 与头文件（PyPI，缓存在 $cache）"
if [ ! -x "$root/bin/nvcc" ]; then
  mkdir -p "$cache/wheels"
  cat > "$cache/requirements.txt" <<'EOF'
nvidia-cuda-nvcc==13.0.88 --hash=sha256:56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03
nvidia-nvvm==13.0.88 --hash=sha256:c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0
nvidia-cuda-crt==13.0.88 --hash=sha256:2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4
nvidia-cuda-runtime==13.0.96 --hash=sha256:7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548
nvidia-cuda-cccl==13.0.85 --hash=sha256:e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649
EOF
  if ! python3 -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
    --python-version 3.11 --require-hashes -r "$cache/requirements.txt" -d "$cache/wheels"; then
    echo "下载不到 CUDA 工具（PyPI 上的 nvidia-cuda-nvcc 等，见 $cache/requirements.txt）" >&2
    exit 3
  fi
  for w in "$cache"/wheels/*.whl; do python3 -m zipfile -e "$w" "$cache"; done
  chmod +x "$root"/bin/* "$root"/nvvm/bin/*
fi
"$root/bin/nvcc" --version | tail -2

say "链接用的桩库（$root/lib64/stubs）"
cudarc="$(cargo metadata --format-version 1 --manifest-path code/Cargo.toml --features cuda 2>/dev/null |
  python3 -c 'import json,sys,os; m=json.load(sys.stdin); print(next(os.path.dirname(p["manifest_path"]) for p in m["packages"] if p["name"]=="cudarc"))')"
python3 code/scripts/cuda_stubs.py "$cudarc" "$root/lib64/stubs"

say "编译（--features cuda，sm_$CUDA_COMPUTE_CAP，目标目录 $target）"
export CUDA_ROOT="$root" PATH="$root/bin:$PATH" CARGO_TARGET_DIR="$target"
build() {
  cargo "$@" --features cuda --message-format=json-render-diagnostics |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"], m["executable"])'
}
# cargo bench 本来就用优化的 bench 配置（不接受 --release）
artifacts="$(build build --release -p llm-book --bin llm-book; build test --release -p llm-book --no-run --test cuda
  build bench -p llm-book --no-run --bench cuda_step)"
echo "$artifacts"

say "打包到 $bundle"
rm -rf "$bundle"
mkdir -p "$bundle"/{bin,tests,benches,stubs}
pick() { echo "$artifacts" | awk -v n="$1" '$1 == n { print $2 }' | tail -1; }
cp "$(pick llm-book)" "$bundle/bin/llm-book"
cp "$(pick cuda)" "$bundle/tests/cuda"
cp "$(pick cuda_step)" "$bundle/benches/cuda_step"
strip "$bundle"/bin/* "$bundle"/tests/* "$bundle"/benches/*
cp -P "$root"/lib64/stubs/* "$bundle/stubs/"
cp code/scripts/run-gpu.sh "$bundle/run-gpu.sh"
{
  echo "built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "compute_cap=$CUDA_COMPUTE_CAP"
  echo "nvcc=$("$root/bin/nvcc" --version | tail -1)"
  # 测试里用 env!("CARGO_MANIFEST_DIR") 找参考数据：在 GPU 机器上，run-gpu.sh 把这个路径指到那里的仓库副本
  echo "manifest_dir=$(pwd)/code"
} > "$bundle/manifest.txt"
du -sh "$bundle" "$bundle"/*
printf '\n完成。GPU 机器上：bash %s/run-gpu.sh；这台机器上演练：bash %s/run-gpu.sh --dry-run\n' "$bundle" "$bundle"
