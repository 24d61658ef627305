#!/usr/bin/env bash
# 附录 B：本书的实现与 PyTorch 在同一台机器上的耗时之比。
# 依次：criterion 测本书一侧（融合算子、dfdx 的组合写法、训练一步），bench_torch.py 测 PyTorch 一侧
# （没装 torch 时跳过，只打印本书与 dfdx 的耗时），最后 `llm-book perf` 打印比值表并写进 code/results/appendix-b-perf.json。
# 用法（在仓库任意位置）：bash code/scripts/bench.sh        约 10 分钟；测量时机器上不要有别的负载。
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo bench --bench kernels --bench train_step
mkdir -p target/perf
torch=()
if python3 code/scripts/bench_torch.py target/perf/torch.json; then
  torch=(--torch target/perf/torch.json)
else
  echo "==> 没有 PyTorch 的测量：只列出本书与 dfdx 的耗时" >&2
fi
cargo run --release --quiet -- perf "${torch[@]}"
