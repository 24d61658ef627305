#!/usr/bin/env bash
# 附录 A 的学习曲线：标注数据从 100 条到全部，从零训练、线性探测、LoRA（q、v）、LoRA（全部线性层）与全量微调。
# 用法（在仓库根目录）：bash code/scripts/learning-curve.sh [方法…，默认全部]
#   1. 学习率扫描：每种方法在 1000 条训练数据、种子 0 上试三个学习率 → code/results/learning-curve/sweep/
#   2. 曲线：用验证集上最好的学习率，每个大小 × 3 个种子 → code/results/learning-curve/runs/
#   3. `cargo run --release -- learning-curve` 汇总成表、写 code/results/appendix-a-learning-curve.json
# 已有结果文件的格会跳过（设 LLM_BOOK_RERUN=1 重跑），所以可以分几次跑完（2 核 CPU 上每格约 1.5 分钟，共 85 格）。
#       bash code/scripts/learning-curve.sh timing [重复次数，默认 3]
# 只测每步耗时：每种方法在全部训练数据上训练 40 步，方法轮流、重复几遍 → code/results/learning-curve/timing/。
# 测的时候不要运行别的东西。
set -euo pipefail
cd "$(dirname "$0")/../.."
source code/scripts/record.sh
out_dir="code/results/learning-curve"
# 耗时测量（timing）只训练 40 步，其余设置相同
max_steps=433; [ "${1:-}" = timing ] && max_steps=40
# ANCHOR: protocol
# 共同的预算：每次 433 步（全部训练数据的一轮）、批大小 32、最长 64 个记号；每 50 步（与最后一步）在验证集前 500 条上评估，
# 取最好的一步在全部测试集上的准确率。数据少时同样 433 步，也就是多轮；不逐轮评估，每种大小都只挑 10 次。
common=(--model "$model" --epochs 100000 --max-steps "$max_steps" --batch-size 32 --max-len 64
        --valid-limit 500 --eval-every 50 --no-epoch-eval --checkpoint-every 100000)
declare -A method=(
  [scratch]="--scratch"
  [probe]="--probe"
  [lora-qv-r8]="--r 8 --alpha 16 --targets query,value"
  [lora-all-r8]="--r 8 --alpha 16 --targets query,key,value,attention.output.dense,intermediate.dense,output.dense"
  [full]="--full"
)
declare -A lrs=(
  [scratch]="3e-4 1e-3 3e-3"
  [probe]="1e-3 3e-3 1e-2"
  [lora-qv-r8]="3e-4 1e-3 3e-3"
  [lora-all-r8]="3e-4 1e-3 3e-3"
  [full]="3e-5 1e-4 3e-4"
)
sizes=(100 300 1000 3000 all)
seeds=(0 1 2)
sweep_size=1000
# ANCHOR_END: protocol
order=(scratch probe lora-qv-r8 lora-all-r8 full)
[ -f "$model/model.safetensors" ] || { echo "没有 $model/model.safetensors" >&2; exit 1; }

run() { # 名字 结果文件（相对 code/results） 其余参数…
  local name="$1" record="$2"; shift 2
  # shellcheck disable=SC2086
  run_record "$record" "${common[@]}" ${method[$name]} "$@"
}

if [ "${1:-}" = timing ]; then
  repeats="${2:-3}"
  rm -rf "$out_dir/timing"
  for rep in $(seq 1 "$repeats"); do
    for name in "${order[@]}"; do
      run "$name" "learning-curve/timing/$name-t$rep" --seed 0
    done
  done
  exit 0
fi
if [ $# -gt 0 ]; then order=("$@"); fi
declare -A chosen
for name in "${order[@]}"; do
  [ -n "${method[$name]+x}" ] || { echo "没有名为 $name 的方法（可选：${!method[*]}）" >&2; exit 1; }
  files=()
  for lr in ${lrs[$name]}; do
    run "$name" "learning-curve/sweep/$name-lr$lr" --lr "$lr" --train-limit "$sweep_size" --seed 0
    files+=("code/results/learning-curve/sweep/$name-lr$lr.json")
  done
  lr="$("$bin" learning-curve --choose-lr "${files[@]}")"
  chosen[$name]="$lr"
  echo "==> $name：验证集上最好的学习率 $lr"
  # 1000 条、种子 0、这个学习率的那一格就是扫描里的那次运行：直接复制
  for l in ${lrs[$name]}; do
    if awk -v a="$lr" -v b="$l" 'BEGIN { exit !(a + 0 == b + 0) }'; then
      mkdir -p "$out_dir/runs"
      target="$out_dir/runs/$name-n$sweep_size-s0.json"
      [ -f "$target" ] || cp "$out_dir/sweep/$name-lr$l.json" "$target"
    fi
  done
done
# 先把种子 0 的整条曲线跑完，再跑别的种子：分几次跑时，中途也有一条完整的曲线可看
for seed in "${seeds[@]}"; do
  for name in "${order[@]}"; do
    for n in "${sizes[@]}"; do
      limit=(); [ "$n" = all ] || limit=(--train-limit "$n")
      run "$name" "learning-curve/runs/$name-n$n-s$seed" --lr "${chosen[$name]}" "${limit[@]}" --seed "$seed"
    done
  done
done
"$bin" learning-curve
