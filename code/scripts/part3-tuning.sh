#!/usr/bin/env bash
# 3.7 节的调参实验：在仓库里的中文迷你 BERT（code/models/mini-chinese-bert，附录 A）上，以 3.6 节的快速演示为基准，每次只改一个超参数。
# 结果写进 code/results/part3-tuning/<名字>.json（书中的表与图从这些文件来）。
# 用法（在仓库根目录）：bash code/scripts/part3-tuning.sh [名字[@种子]…]   （不给名字就全部跑；每个约 1 分钟，2 核 CPU）
# 名字后加 @种子 换一个种子（默认 0），结果写进 part3-tuning/<名字>-s<种子>.json：如 demo@1 demo@2 看种子带来的差别。
# 已有结果的跳过（设 LLM_BOOK_RERUN=1 重跑）。
set -euo pipefail
cd "$(dirname "$0")/../.."
source code/scripts/record.sh
# ANCHOR: runs
# 所有运行共用的预算：200 步、批大小 16、最长 64 个记号、验证集前 300 条每 100 步评估一次，测试集全部
common=(--model "$model" "${mini[@]}" --max-steps 200 --eval-every 100)

declare -A runs=(
  [demo]="--r 16 --alpha 32 --targets query,value --lora-dropout 0.1"
  [r1]="--r 1 --alpha 2 --targets query,value --lora-dropout 0.1"
  [r4]="--r 4 --alpha 8 --targets query,value --lora-dropout 0.1"
  [r32]="--r 32 --alpha 64 --targets query,value --lora-dropout 0.1"
  [alpha16]="--r 16 --alpha 16 --targets query,value --lora-dropout 0.1"
  [alpha64]="--r 16 --alpha 64 --targets query,value --lora-dropout 0.1"
  [lr1e-4]="--r 16 --alpha 32 --targets query,value --lora-dropout 0.1 --lr 1e-4"
  [lr2e-3]="--r 16 --alpha 32 --targets query,value --lora-dropout 0.1 --lr 2e-3"
  [attention]="--r 16 --alpha 32 --targets query,key,value,attention.output.dense --lora-dropout 0.1"
  [all-linear]="--r 16 --alpha 32 --targets query,key,value,attention.output.dense,intermediate.dense,output.dense --lora-dropout 0.1"
  [dropout0]="--r 16 --alpha 32 --targets query,value --lora-dropout 0"
  [full]="--full --lr 5e-5"
)
# ANCHOR_END: runs
order=(demo r1 r4 r32 alpha16 alpha64 lr1e-4 lr2e-3 attention all-linear dropout0 full)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=("${order[@]}")
for arg in "${names[@]}"; do
  name="${arg%@*}"; seed=0; record="$name"
  if [ "$arg" != "$name" ]; then seed="${arg#*@}"; record="$name-s$seed"; fi
  [ -n "${runs[$name]+x}" ] || { echo "没有叫 $name 的运行：可选 ${order[*]}" >&2; exit 1; }
  # shellcheck disable=SC2086
  run_record "part3-tuning/$record" "${common[@]}" ${runs[$name]} --seed "$seed"
done
