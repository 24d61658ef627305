#!/usr/bin/env bash
# 4.1 节的实验：固定 α = 16，秩 4、16、64、256，缩放系数 α/r（原始 LoRA）与 α/√r（rsLoRA）各训练一次，3 个种子。
# 其余设置与 3.7 节的基准相同（仓库里的中文迷你 BERT，query/value，dropout 0.1，学习率 5e-4，200 步，批大小 16）。
# 结果写进 code/results/part4-rslora/<名字>-s<种子>.json；已有的跳过（LLM_BOOK_RERUN=1 重跑）。
# 用法（在仓库根目录）：bash code/scripts/part4-rslora.sh   （24 次，2 核 CPU 上每次约 20 秒）
set -euo pipefail
cd "$(dirname "$0")/../.."
source code/scripts/record.sh
# ANCHOR: runs
# mini（code/scripts/record.sh）：批大小 16、最长 64 个记号、验证集前 300 条
common=(--model "$model" "${mini[@]}" --max-steps 200 --eval-every 100
        --alpha 16 --targets query,value --lora-dropout 0.1)
ranks=(4 16 64 256)
scalings=(lora rslora)   # rslora：加 --use-rslora
seeds=(0 1 2)
# ANCHOR_END: runs
for seed in "${seeds[@]}"; do
  for r in "${ranks[@]}"; do
    for scaling in "${scalings[@]}"; do
      flag=(); [ "$scaling" = rslora ] && flag=(--use-rslora)
      run_record "part4-rslora/$scaling-r$r-s$seed" "${common[@]}" --r "$r" "${flag[@]}" --seed "$seed"
    done
  done
done
