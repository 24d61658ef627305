#!/usr/bin/env bash
# 4.5 节的实验：同样的 LoRA（r = 16、α = 32，query、value），冻结的基座分别以 f32、int8、NF4 存放（--quantize），3 个种子。
# 其余设置与 4.3 节相同（仓库里的中文迷你 BERT，dropout 0.1，学习率 5e-4，200 步，批大小 16，每 50 步评估一次）。
# 结果写进 code/results/part4-quant/<格式>-s<种子>.json；已有的跳过（LLM_BOOK_RERUN=1 重跑）。
# 内存表另由 cargo run --release --example qlora_memory 测（bert-base 大小，写 code/results/part4-quant/memory.json）。
# 用法（在仓库根目录）：bash code/scripts/part4-quant.sh   （9 次，2 核 CPU 上每次约 20 秒）
set -euo pipefail
cd "$(dirname "$0")/../.."
source code/scripts/record.sh
# ANCHOR: runs
# mini（code/scripts/record.sh）：批大小 16、最长 64 个记号、验证集前 300 条
common=(--model "$model" "${mini[@]}" --max-steps 200 --eval-every 50
        --lora-dropout 0.1 --targets query,value --r 16 --alpha 32)
formats=(f32 int8 nf4)
seeds=(0 1 2)
for seed in "${seeds[@]}"; do
  for format in "${formats[@]}"; do
    quant=()
    [ "$format" = f32 ] || quant=(--quantize "$format")
    run_record "part4-quant/$format-s$seed" "${common[@]}" "${quant[@]}" --seed "$seed"
  done
done
# ANCHOR_END: runs
