#!/usr/bin/env bash
# 附录 B：本书的实现与 PyTorch 在同一台机器上的耗时之比。
# 每一轮：criterion 测本书一侧（融合算子、dfdx 的组合写法、训练一步），bench_torch.py 测 PyTorch 一侧（没装 torch 时跳过，
# 只列本书与 dfdx 的耗时）；各轮的结果存在 target/perf/rounds/round-N/。最后 `llm-book perf --rounds` 取各轮的中位数，
# 打印比值表（测了几轮时另列各轮比值的范围），写进 code/results/appendix-b-perf.json；最后测全量微调与 LoRA 的内存（examples/train_memory.rs 与 memory_torch.py），
# 再比较本书、PyTorch 与 candle 的推理（peers.sh）。
# 两边是先后测的：共享的虚拟机上，不同时刻可以差 10%–15%，多测几轮、两边交替，比值才可信。
# 用法（在仓库任意位置）：bash code/scripts/bench.sh [轮数]     每轮约 12 分钟（默认 1 轮）；测量时机器上不要有别的负载。
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds="${1:-1}"
if ! [[ "$rounds" =~ ^[1-9][0-9]*$ ]]; then
  echo "用法：bash code/scripts/bench.sh [轮数]（轮数是正整数，默认 1）" >&2
  exit 2
fi
torch=1
if ! python3 -c "import torch" 2>/dev/null; then
  echo "==> 没有安装 PyTorch（pip install torch）：只列出本书与 dfdx 的耗时" >&2
  torch=0
fi
out=target/perf/rounds
rm -rf "$out"
for r in $(seq 1 "$rounds"); do
  dir="$out/round-$r"
  mkdir -p "$dir/criterion"
  echo "==> 第 $r/$rounds 轮：本书一侧（criterion）" >&2
  cargo bench --bench kernels --bench train_step
  # 只留下各项的估计值（criterion 的报告很大，下一轮会覆盖 target/criterion）
  (cd target/criterion && find . -path '*/new/estimates.json' -exec cp --parents {} "../../$dir/criterion/" \;)
  if [ "$torch" = 1 ]; then
    echo "==> 第 $r/$rounds 轮：PyTorch 一侧" >&2
    python3 code/scripts/bench_torch.py "$dir/torch.json"
  fi
done
cargo run --release --quiet -- perf --rounds "$out"
echo "==> 内存：全量微调与 LoRA 训练一步的常驻与峰值（本书一侧）" >&2
cargo run --release --quiet --example train_memory
if [ "$torch" = 1 ]; then
  echo "==> 内存：PyTorch 一侧（需要 transformers 与 peft，没有时跳过）" >&2
  python3 code/scripts/memory_torch.py target/perf/memory-torch.json || echo "（PyTorch 一侧的内存没有测）" >&2
fi
echo "==> 同行比较：本书、PyTorch 与 candle 的 BERT 推理（code/scripts/peers.sh；第一次要编译 candle，约 10 分钟）" >&2
bash code/scripts/peers.sh "$rounds"
