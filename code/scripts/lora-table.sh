#!/usr/bin/env bash
# 附录 A 的对比表：在预训练好的中文迷你 BERT 上，从零训练、线性探测、全量微调与不同秩的 LoRA，各跑几个种子。
# 结果写进 code/results/part-a/<方法>-s<种子>.json；`cargo run --release -- lora-table` 汇总成表与图（待做）。
# 用法（在仓库根目录）：bash code/scripts/lora-table.sh [种子个数，默认 3] [方法…，默认全部]
# 已有结果文件的格会跳过（设 LLM_BOOK_RERUN=1 重跑），所以可以分几次跑完。
#       bash code/scripts/lora-table.sh timing [重复次数，默认 3]
# 只测每步耗时：每种方法训练 40 步，方法轮流、重复几遍，写进 code/results/part-a-timing/（表中的“每步”取其中位数）。
# 长的运行难免遇上机器上别的负载，所以耗时单独在空闲的机器上测；测的时候不要运行别的东西。
# 需要先运行 `cargo run --release -- pretrain`（得到 code/runs/mini-chinese-bert/model）。
set -euo pipefail
cd "$(dirname "$0")/../.."
source code/scripts/record.sh
seeds="${1:-3}"
model="code/runs/mini-chinese-bert/model"
[ -f "$model/model.safetensors" ] || { echo "没有 $model：先运行 (cd code && cargo run --release -- pretrain)" >&2; exit 1; }
# ANCHOR: runs
# 所有运行共用的预算：一轮（433 步）、批大小 32、最长 64 个记号；验证集前 500 条选最好的一步，测试集全部
common=(--model "$model" --epochs 1 --batch-size 32 --max-len 64 --valid-limit 500 --eval-every 100)
declare -A runs=(
  [scratch]="--scratch --lr 5e-4"
  [probe]="--probe --lr 1e-3"
  [full]="--full --lr 1e-4"
  [lora-r1]="--r 1 --alpha 2 --targets query,value --lr 1e-3"
  [lora-r4]="--r 4 --alpha 8 --targets query,value --lr 1e-3"
  [lora-r8]="--r 8 --alpha 16 --targets query,value --lr 1e-3"
  [lora-r16]="--r 16 --alpha 32 --targets query,value --lr 1e-3"
  [lora-all-r8]="--r 8 --alpha 16 --targets query,key,value,attention.output.dense,intermediate.dense,output.dense --lr 1e-3"
)
# ANCHOR_END: runs
order=(scratch probe full lora-r1 lora-r4 lora-r8 lora-r16 lora-all-r8)
if [ "${1:-}" = timing ]; then
  repeats="${2:-3}"
  rm -rf code/results/part-a-timing
  for rep in $(seq 1 "$repeats"); do
    for name in "${order[@]}"; do
      # shellcheck disable=SC2086
      run_record "part-a-timing/$name-t$rep" "${common[@]}" ${runs[$name]} --max-steps 40 --seed 0
    done
  done
  exit 0
fi
if [ $# -gt 1 ]; then order=("${@:2}"); fi
for seed in $(seq 0 $((seeds - 1))); do
  for name in "${order[@]}"; do
    # shellcheck disable=SC2086
    run_record "part-a/$name-s$seed" "${common[@]}" ${runs[$name]} --seed "$seed"
  done
done
