#!/usr/bin/env bash
# 4.3 节的实验：同样的秩与目标层，四种初始化（--init-lora-weights kaiming、gaussian、pissa、olora）各训练一次，3 个种子。
# 其余设置与 3.7 节的基准相同（仓库里的中文迷你 BERT，α = 2r，dropout 0.1，学习率 5e-4，200 步，批大小 16），
# 每 50 步在验证集上评估一次，看前期的损失下降得快不快。
# 结果写进 code/results/part4-init/<初始化>-<名字>-s<种子>.json；已有的跳过（LLM_BOOK_RERUN=1 重跑）。
# 用法（在仓库根目录）：bash code/scripts/part4-init.sh   （24 次，2 核 CPU 上每次约 20 秒）
set -euo pipefail
cd "$(dirname "$0")/../.."
source code/scripts/record.sh
# ANCHOR: runs
# mini（code/scripts/record.sh）：批大小 16、最长 64 个记号、验证集前 300 条
common=(--model "$model" "${mini[@]}" --max-steps 200 --eval-every 50
        --lora-dropout 0.1 --targets query,value)
declare -A runs=(
  [r4]="--r 4 --alpha 8"
  [r16]="--r 16 --alpha 32"
)
order=(r4 r16)
inits=(kaiming gaussian pissa olora)
seeds=(0 1 2)
# ANCHOR_END: runs
for seed in "${seeds[@]}"; do
  for name in "${order[@]}"; do
    for init in "${inits[@]}"; do
      # shellcheck disable=SC2086
      run_record "part4-init/$init-$name-s$seed" "${common[@]}" ${runs[$name]} --init-lora-weights "$init" --seed "$seed"
    done
  done
done
