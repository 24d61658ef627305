#!/usr/bin/env bash
# 在有 NVIDIA GPU 的机器上运行 cuda-build.sh 打好的包（不需要 Rust；要驱动与 CUDA 运行库），写一份报告。
#
# 用法（在仓库副本的根目录；包在 target/cuda/bundle）：
#   bash target/cuda/bundle/run-gpu.sh             # GPU 上：测试、各部分的短训练（GPU 与 CPU 各一次）、基准
#   bash target/cuda/bundle/run-gpu.sh --dry-run   # 没有 GPU 的机器上演练：用桩库启动同样的程序，检查 GPU 上的每一步都给出清楚的中文错误，
#                                                  # CPU 上的短训练照常运行
# 报告：${OUT:-target/cuda/report}/cuda-report.md（另有各步的完整输出 *.log）。
#
# 做的事：
#   1. 找驱动（nvidia-smi，要求支持 CUDA 13.0，即 R580 及以上：nvcc 13.0 生成的 PTX 要它来编译）与 CUDA 运行库
#      （libcublas、libcublasLt、libnvrtc，12 或 13 版；在 ldconfig、/usr/local/cuda、Python 的 nvidia-* 包里找），
#      为它们建不带版本号的链接（包里的程序按 libcublas.so 等名字链接）；
#   2. 测试：tests/cuda（GPU 上与 PyTorch/transformers 一致、梯度检查）；
#   3. 各部分的短训练，GPU 与 CPU 各一次：第 1 部分 sentiment、第 3 部分 finetune（LoRA 与全量，tiny-bert）、附录 A pretrain；
#   4. 基准：benches/cuda_step（编码器 d512、bert-base 全量与 LoRA 的训练一步），与附录 B 的 CPU 数字对照；
#      装了 PyTorch 与 GPU 时，再跑 code/scripts/bench_torch.py --device cuda 对照。
set -uo pipefail
bundle="$(cd "$(dirname "$0")" && pwd)"
dry=0
[ "${1:-}" = "--dry-run" ] && dry=1
out="${OUT:-target/cuda/report}"
mkdir -p "$out"
report="$out/cuda-report.md"
manifest_dir="$(sed -n 's/^manifest_dir=//p' "$bundle/manifest.txt")"
failures=0

log() { printf '%s\n' "$*" | tee -a "$report"; }
fail() { log "- ✗ $*"; failures=$((failures + 1)); }

: > "$report"
log "# CUDA 版本的运行报告"
log ""
log "包：$(tr '\n' ' ' < "$bundle/manifest.txt")"
log ""

# ---- 1. 驱动与运行库 ----
libs="$out/libs"
rm -rf "$libs" && mkdir -p "$libs"
if [ "$dry" = 1 ]; then
  log "**演练**（--dry-run）：用包里的桩库代替驱动与 CUDA 运行库，每个 GPU 上的步骤都应以“没有可用的 GPU”的中文错误、非零退出码结束。"
  export LD_LIBRARY_PATH="$bundle/stubs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
else
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    log "这台机器上没有 nvidia-smi：没有 NVIDIA 驱动，不能在 GPU 上运行。没有 GPU 的机器上可以加 --dry-run 演练。"
    exit 1
  fi
  gpu="$(nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader | head -1)"
  log "GPU：$gpu"
  driver_major="$(echo "$gpu" | awk -F', ' '{ split($2, v, "."); print v[1] }')"
  if [ "${driver_major:-0}" -lt 580 ]; then
    log "驱动 $driver_major 太旧：包里的内核是 nvcc 13.0 生成的 PTX，需要支持 CUDA 13.0 的驱动（R580 及以上）。"
    exit 1
  fi
  search=(/usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu)
  IFS=: read -r -a extra <<< "${LD_LIBRARY_PATH:-}"
  search+=("${extra[@]}")
  if command -v python3 >/dev/null 2>&1; then
    while read -r d; do search+=("$d"); done < <(python3 - <<'EOF' 2>/dev/null
import glob, site, sys
for base in site.getsitepackages() + [site.getusersitepackages()]:
    for d in sorted(glob.glob(base + "/nvidia/*/lib")):
        print(d)
EOF
)
  fi
  for name in libcublas libcublasLt libnvrtc; do
    found=""
    for major in 13 12; do
      for d in "${search[@]}"; do
        [ -n "$d" ] && [ -e "$d/$name.so.$major" ] && { found="$d/$name.so.$major"; break 2; }
      done
      found="$(ldconfig -p 2>/dev/null | awk -v n="$name.so.$major" '$1 == n { print $NF; exit }')"
      [ -n "$found" ] && break
    done
    if [ -z "$found" ]; then
      log "找不到 $name.so.13 或 .so.12：请装上 CUDA 运行库（CUDA 工具包，或 pip 的 nvidia-cublas、nvidia-cuda-nvrtc 包），或把它们所在的目录加进 LD_LIBRARY_PATH。"
      exit 1
    fi
    ln -sf "$found" "$libs/$name.so"
    log "- $name：$found"
  done
  export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  # dfdx 运行时用 NVRTC 编译几个内核，要 CUDA 头文件（code/vendor/README.md）
  for inc in /usr/local/cuda/include "$(dirname "$(readlink -f "$libs/libnvrtc.so")")/../include"; do
    if [ -f "$inc/cuda_fp16.h" ]; then export CUDA_INCLUDE_DIR="$inc"; log "- CUDA 头文件：$inc"; break; fi
  done
fi

# 测试与实验按编译时的仓库路径（env!("CARGO_MANIFEST_DIR")）找参考数据与语料：指到这里的仓库副本
if [ "$manifest_dir" != "$(pwd)/code" ] && [ ! -e "$manifest_dir" ]; then
  mkdir -p "$(dirname "$manifest_dir")" 2>/dev/null && ln -s "$(pwd)/code" "$manifest_dir" 2>/dev/null ||
    log "（注意：建不了 $manifest_dir → $(pwd)/code 的链接，测试可能找不到参考数据）"
fi

# 运行一步：名字、设备、命令。GPU 上要成功；演练时要以含“GPU”的中文错误、非零退出码结束：
# 实验程序与基准不许 panic，测试程序的失败本来就是 panic（消息要是“没有可用的 GPU”，而不是 cudarc 里的 unwrap）。
step_time() { grep -o '每步 [0-9.]* 秒' "$1" | tail -1 | grep -o '[0-9.]*'; }
run() {
  local name="$1" device="$2"; shift 2
  local logf="$out/$name-$device.log"
  "$@" > "$logf" 2>&1
  local rc=$?
  if [ "$dry" = 1 ] && [ "$device" = cuda ]; then
    local panic_ok=0
    [ "$name" = tests ] && panic_ok=1
    if [ $rc -ne 0 ] && grep -q "GPU" "$logf" && ! grep -q 'Result::unwrap()' "$logf" &&
      { [ $panic_ok = 1 ] || ! grep -q "panicked" "$logf"; }; then
      log "- ✓ $name（$device）：如预期地失败（退出码 $rc）：$(grep -m1 'GPU' "$logf" | cut -c1-160)"
    else
      fail "$name（$device）：退出码 $rc，输出不是预期的中文错误（见 $logf）"
    fi
    return
  fi
  if [ $rc -eq 0 ]; then
    local t; t="$(step_time "$logf")"
    log "- ✓ $name（$device）${t:+：每步 $t 秒}"
    echo "$name $device ${t:-}" >> "$out/times.txt"
  else
    fail "$name（$device）：退出码 $rc（见 $logf）：$(tail -3 "$logf" | tr '\n' ' ' | cut -c1-200)"
  fi
}

bin="$bundle/bin/llm-book"
tmp="$(mktemp -d)"
: > "$out/times.txt"

log ""
log "## 测试（tests/cuda）"
if [ "$dry" = 1 ]; then
  "$bundle/tests/cuda" --list > "$out/tests-list.log" 2>&1 && log "- ✓ 测试程序能启动：$(grep -c ': test' "$out/tests-list.log") 个测试"
  run tests cuda "$bundle/tests/cuda" --test-threads=1 transformer_matches_pytorch_on_gpu
else
  run tests cuda "$bundle/tests/cuda" --test-threads=1 --nocapture
  grep -E "test result|最大误差" "$out/tests-cuda.log" | sed 's/^/  /' | tee -a "$report"
fi

log ""
log "## 各部分的短训练（GPU 与 CPU 各一次）"
for device in cuda cpu; do
  run part1-sentiment "$device" "$bin" sentiment --max-steps 60 --dry-run --device "$device"
  # 小 BERT（tests/fixtures/tiny-bert）只有 24 个位置：--max-len 不能更大
  run part3-lora "$device" "$bin" finetune --model code/tests/fixtures/tiny-bert --out "$tmp/lora-$device" \
    --max-steps 30 --batch-size 16 --max-len 24 --valid-limit 64 --device "$device"
  run part3-full "$device" "$bin" finetune --model code/tests/fixtures/tiny-bert --out "$tmp/full-$device" \
    --full --max-steps 30 --batch-size 16 --max-len 24 --valid-limit 64 --device "$device"
  run appendix-a-pretrain "$device" "$bin" pretrain --out "$tmp/pretrain-$device" --steps 30 --eval-every 30 --device "$device"
done
log ""
log "| 训练 | GPU 每步（秒） | CPU 每步（秒） | CPU / GPU |"
log "| --- | ---: | ---: | ---: |"
for name in part1-sentiment part3-lora part3-full appendix-a-pretrain; do
  g="$(awk -v n="$name" '$1 == n && $2 == "cuda" { print $3 }' "$out/times.txt")"
  c="$(awk -v n="$name" '$1 == n && $2 == "cpu" { print $3 }' "$out/times.txt")"
  r="$(awk -v g="${g:-0}" -v c="${c:-0}" 'BEGIN { if (g > 0 && c > 0) printf "%.1f", c / g; else print "—" }')"
  log "| $name | ${g:-—} | ${c:-—} | $r |"
done

log ""
log "## 基准（benches/cuda_step：训练一步，前向 + 反向）"
if [ "$dry" = 1 ]; then
  run bench cuda "$bundle/benches/cuda_step" --bench
else
  CRITERION_HOME="$out/criterion" run bench cuda "$bundle/benches/cuda_step" --bench
  grep -E "^(cuda_train_step|time:)|time: " "$out/bench-cuda.log" | sed 's/^/    /' | tee -a "$report"
  if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    log ""
    log "PyTorch（同一块 GPU）："
    python3 code/scripts/bench_torch.py "$out/torch-cuda.json" --device cuda > "$out/torch-cuda.log" 2>&1 &&
      sed 's/^/    /' "$out/torch-cuda.log" | tee -a "$report" || fail "bench_torch.py --device cuda（见 $out/torch-cuda.log）"
  else
    log "（这台机器上没有能用 GPU 的 PyTorch：不做 PyTorch 的对照）"
  fi
  log ""
  log "CPU 上的同一组测量（附录 B，作者的 2 核机器）见 code/results/appendix-b-perf.json。"
fi
rm -rf "$tmp"

log ""
if [ $failures -eq 0 ]; then
  log "全部通过。报告：$report"
else
  log "$failures 项没有通过。报告：$report"
  exit 1
fi
