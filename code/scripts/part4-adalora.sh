#!/usr/bin/env bash
# 4.4 节的实验：AdaLoRA 把秩分给谁。仓库里的中文迷你 BERT（4 层），每层的 query、key、value 与三种 dense 共 24 个模块，
# AdaLoRA 从每个模块秩 12 开始，剪到平均秩 4（预算 288 → 96）；对照是同样 24 个模块上秩 4 的 LoRA（同样的最终预算，
# 平均分配）与秩 12 的 LoRA（同样的起点）。300 步，批大小 16，每 50 步评估一次；AdaLoRA 的秩在第 240 步定下，
# 之前的评估不参加“最好的一步”的评选。
# 先在种子 0 上扫学习率，再用选定的学习率跑 3 个种子。
# 结果写进 code/results/part4-adalora/<方法>-lr<学习率>-s<种子>.json（AdaLoRA 的结果里有各模块最后的秩 adalora_ranks）；
# 已有的跳过（LLM_BOOK_RERUN=1 重跑）。
# 用法（在仓库根目录）：bash code/scripts/part4-adalora.sh   （18 次，2 核 CPU 上每次训练约 12 秒，连同读数据、评估约 20 秒）
set -euo pipefail
cd "$(dirname "$0")/../.."
source code/scripts/record.sh
config="$(mktemp)"
trap 'rm -f "$config"' EXIT
# ANCHOR: config
# PEFT 的 AdaLoraConfig 写成的 adapter_config.json（没写的字段取 PEFT 的默认值：beta1 = beta2 = 0.85）
cat > "$config" <<'JSON'
{
  "peft_type": "ADALORA",
  "task_type": "SEQ_CLS",
  "target_modules": ["query", "key", "value", "dense"],
  "init_r": 12,
  "target_r": 4,
  "tinit": 30,
  "tfinal": 60,
  "deltaT": 10,
  "total_step": 300,
  "lora_alpha": 32,
  "lora_dropout": 0.1,
  "orth_reg_weight": 0.5
}
JSON
# ANCHOR_END: config
# ANCHOR: runs
# mini（code/scripts/record.sh）：批大小 16、最长 64 个记号、验证集前 300 条
common=(--model "$model" "${mini[@]}" --max-steps 300 --eval-every 50)
lora=(--targets query,key,value,dense --alpha 32 --lora-dropout 0.1)
# 学习率（种子 0）
for lr in 0.0005 0.002 0.005; do
  run_record "part4-adalora/adalora-lr$lr-s0" "${common[@]}" --lora-config "$config" --lr "$lr" --seed 0
done
for lr in 0.0005 0.002; do
  run_record "part4-adalora/lora-r4-lr$lr-s0" "${common[@]}" "${lora[@]}" --r 4 --lr "$lr" --seed 0
done
# 3 个种子
for seed in 0 1 2; do
  run_record "part4-adalora/adalora-lr0.005-s$seed" "${common[@]}" --lora-config "$config" --lr 0.005 --seed "$seed"
  run_record "part4-adalora/lora-r4-lr0.0005-s$seed" "${common[@]}" "${lora[@]}" --r 4 --lr 0.0005 --seed "$seed"
  run_record "part4-adalora/lora-r12-lr0.0005-s$seed" "${common[@]}" "${lora[@]}" --r 12 --lr 0.0005 --seed "$seed"
done
# ANCHOR_END: runs
# ANCHOR: vo
# 思考题：按 AdaLoRA 的分配只在 V 与注意力输出上加 LoRA，秩 12（秩的总数同为 4 层 × 2 × 12 = 96）
for seed in 0 1 2; do
  run_record "part4-adalora/lora-vo-r12-lr0.0005-s$seed" "${common[@]}" --targets value,attention.output.dense \
    --alpha 32 --lora-dropout 0.1 --r 12 --lr 0.0005 --seed "$seed"
done
# ANCHOR_END: vo
# ANCHOR: orth0
# 思考题：去掉正交正则（orth_reg_weight = 0，不加正则；PEFT 0.21.2 同样允许 0）
config0="$(mktemp)"
trap 'rm -f "$config" "$config0"' EXIT
sed 's/"orth_reg_weight": 0.5/"orth_reg_weight": 0/' "$config" > "$config0"
for seed in 0 1 2; do
  run_record "part4-adalora/adalora-orth0-lr0.005-s$seed" "${common[@]}" --lora-config "$config0" --lr 0.005 --seed "$seed"
done
# ANCHOR_END: orth0
