#!/usr/bin/env bash
# 4.6 节的实验：同一个中文迷你 BERT 上，两个任务各训练一个 LoRA 适配器——情感（负面/正面）与评论的类别（酒店/书籍/电脑），
# 再用一条 classify 命令让两个适配器共用一个基座、逐个输出；与分两次运行比较耗时与峰值内存。
# 适配器写进 code/runs/part4-multi/<任务>/adapter/，结果写进 code/results/part4-multi/（已有的训练跳过，LLM_BOOK_RERUN=1 重跑）。
# 用法（在仓库根目录）：bash code/scripts/part4-multi.sh   （2 核 CPU 上训练每个约 30 秒；测耗时时不要运行别的东西）
set -euo pipefail
cd "$(dirname "$0")/../.."
source code/scripts/record.sh
runs="code/runs/part4-multi"
results="code/results/part4-multi"
mkdir -p "$results"
# ANCHOR: runs
# mini（code/scripts/record.sh）：批大小 16、最长 64 个记号、验证集前 300 条
common=(--model "$model" "${mini[@]}" --max-steps 400 --eval-every 100
        --r 8 --alpha 16 --targets query,value --lora-dropout 0.1 --seed 0)
tasks=(sentiment domain)
texts=("房间很干净，服务也周到" "这本书印刷粗糙，内容也空洞" "屏幕很亮，键盘手感一般" "物流太慢了，再也不买了")
# ANCHOR_END: runs
for task in "${tasks[@]}"; do
  if [ -f "$runs/$task/adapter/adapter_model.safetensors" ] && [ -f "$results/$task.json" ] && [ -z "${LLM_BOOK_RERUN:-}" ]; then
    echo "==> $task：已有适配器，跳过"; continue
  fi
  rm -rf "$runs/$task"
  echo "==> 训练 $task"
  "$bin" finetune "${common[@]}" --task "$task" --out "$runs/$task" --record "part4-multi/$task" | grep '^测试集'
done
adapters=()
for task in "${tasks[@]}"; do adapters+=(--adapter "$runs/$task/adapter"); done
# 一条命令、一个基座、两个适配器；输出写进结果目录
"$bin" classify --model "$model" "${adapters[@]}" "${texts[@]}" | tee "$results/classify.txt"
# 耗时与峰值内存：一条命令两个适配器，对两条命令各一个适配器；轮流各 7 遍（墙钟用 bash 的 EPOCHREALTIME，微秒级）
measure() { # 输出：秒 峰值KB
  local start=$EPOCHREALTIME
  /usr/bin/time -f "%M" -o /tmp/part4-multi-time "$@" > /dev/null
  echo "$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.4f", b - a }') $(cat /tmp/part4-multi-time)"
}
: > "$results/timing.txt"
for rep in 1 2 3 4 5 6 7; do
  echo "together $(measure "$bin" classify --model "$model" "${adapters[@]}" "${texts[@]}")" >> "$results/timing.txt"
  a="$(measure "$bin" classify --model "$model" --adapter "$runs/sentiment/adapter" "${texts[@]}")"
  b="$(measure "$bin" classify --model "$model" --adapter "$runs/domain/adapter" "${texts[@]}")"
  echo "separate $a $b" >> "$results/timing.txt"
done
# 文件大小（字节）：基座的权重与每个适配器的权重
echo "bytes base $(stat -c %s "$model/model.safetensors")" >> "$results/timing.txt"
for task in "${tasks[@]}"; do
  echo "bytes $task $(stat -c %s "$runs/$task/adapter/adapter_model.safetensors")" >> "$results/timing.txt"
done
echo "机器：$(lscpu | sed -n 's/^Model name: *//p')，$(nproc) 核" >> "$results/timing.txt"
cat "$results/timing.txt"
