#!/usr/bin/env bash
# 4.2 节的实验：同样的秩与目标层，LoRA 与 DoRA（--use-dora）各训练一次，3 个种子。
# 其余设置与 3.7 节的基准相同（仓库里的中文迷你 BERT，α = 2r，dropout 0.1，学习率 5e-4，200 步，批大小 16）。
# 结果写进 code/results/part4-dora/<名字>-s<种子>.json；已有的跳过（LLM_BOOK_RERUN=1 重跑）。
# 用法（在仓库根目录）：bash code/scripts/part4-dora.sh   （24 次，2 核 CPU 上每次约 20–30 秒；记录里的每步耗时要在空闲的机器上才可比）
set -euo pipefail
cd "$(dirname "$0")/../.."
source code/scripts/record.sh
# ANCHOR: runs
# mini（code/scripts/record.sh）：批大小 16、最长 64 个记号、验证集前 300 条
common=(--model "$model" "${mini[@]}" --max-steps 200 --eval-every 100
        --lora-dropout 0.1)
declare -A runs=(
  [qv-r1]="--r 1 --alpha 2 --targets query,value"
  [qv-r4]="--r 4 --alpha 8 --targets query,value"
  [qv-r16]="--r 16 --alpha 32 --targets query,value"
  [all-r4]="--r 4 --alpha 8 --targets query,key,value,attention.output.dense,intermediate.dense,output.dense"
)
order=(qv-r1 qv-r4 qv-r16 all-r4)
variants=(lora dora)   # dora：加 --use-dora
seeds=(0 1 2)
# ANCHOR_END: runs
for seed in "${seeds[@]}"; do
  for name in "${order[@]}"; do
    for variant in "${variants[@]}"; do
      flag=(); [ "$variant" = dora ] && flag=(--use-dora)
      # shellcheck disable=SC2086
      run_record "part4-dora/$variant-$name-s$seed" "${common[@]}" ${runs[$name]} "${flag[@]}" --seed "$seed"
    done
  done
done
