#!/usr/bin/env bash
# 附录 B：本书、PyTorch（transformers）与 candle 做 BERT 推理的耗时，同样的输入（不填充）、同样的线程数（这台机器的全部核）。
# 情形：all-MiniLM-L6-v2 [4,128]、[32,128]，bert-base（随机权重）[8,128] 的推理，以及 bert-base 全量微调的训练一步 [8,128]。每轮三方依次各跑一遍（每轮换一个先后顺序），
# 每次空跑 1 遍、计时 5 遍取中位数；每次的结果记在 code/results/appendix-b-peers.jsonl，最后取各轮的中位数，打印表格（`peer_inference --summarize`）。
# candle（candle-core/nn/transformers 0.9.2）在单独的 cargo 工作区 code/peers/candle-bench，默认的构建与测试不编译它。
# 没有 torch/transformers 时只比较本书与 candle。
# 用法（在仓库任意位置）：bash code/scripts/peers.sh [轮数]（默认 3）；测量时机器上不要有别的负载。
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds="${1:-3}"
if ! [[ "$rounds" =~ ^[1-9][0-9]*$ ]]; then
  echo "用法：bash code/scripts/peers.sh [轮数]（轮数是正整数，默认 3）" >&2
  exit 2
fi
py="${PYTHON:-python3}"
torch=1
"$py" -c "import torch, transformers" 2>/dev/null || { torch=0; echo "==> 没有 torch/transformers：只比较本书与 candle" >&2; }
out=target/peers
mkdir -p "$out"
minilm="$(bash code/scripts/fetch-minilm.sh)"
bertbase="$out/bert-base-random"
if [ ! -f "$bertbase/model.safetensors" ]; then
  if [ "$torch" = 1 ]; then
    "$py" code/scripts/peer_torch.py --make-bert-base "$bertbase" "$minilm"
  else
    echo "==> 没有 transformers，写不了随机的 bert-base：跳过这一情形" >&2
  fi
fi
cargo build --release --example peer_inference --example step_timing
CARGO_TARGET_DIR="$PWD/$out/cargo" cargo build --release --manifest-path code/peers/candle-bench/Cargo.toml
ours=target/release/examples/peer_inference
candle="$out/cargo/release/candle-bench"
results="$out/results.jsonl"
: > "$results"
cases=("all-MiniLM-L6-v2 [4,128]|$minilm|4|128" "all-MiniLM-L6-v2 [32,128]|$minilm|32|128")
[ -f "$bertbase/model.safetensors" ] && cases+=("bert-base [8,128]|$bertbase|8|128")
# 训练一步（全量微调，前向 + 反向，不含优化器）：bert-base-chinese 大小、随机权重；dir 为 --train 表示这一种
cases+=("bert-base 训练一步（全量）[8,128]|--train|8|128")
impls=(ours candle)
[ "$torch" = 1 ] && impls+=(torch)
for r in $(seq 1 "$rounds"); do
  # 每轮把先后顺序转一位：谁先跑不总是同一个
  shift_by=$(( (r - 1) % ${#impls[@]} ))
  order=("${impls[@]:$shift_by}" "${impls[@]:0:$shift_by}")
  for c in "${cases[@]}"; do
    IFS='|' read -r name dir b s <<< "$c"
    for i in "${order[@]}"; do
      if [ "$dir" = --train ]; then
        case "$i" in
          # step_timing 打印“full：中位数 N 毫秒（…）”，与 benches/train_step.rs 测的是同一个函数
          ours) line="$(ROUNDS=3 target/release/examples/step_timing full | sed -n 's/^full：中位数 \([0-9.]*\) 毫秒.*/{"impl": "ours", "median_ms": \1}/p')" ;;
          candle) line="$("$candle" --train "$b" "$s" 3)" ;;
          torch) line="$("$py" code/scripts/peer_torch.py --train "$b" "$s" 3)" ;;
        esac
      else
        case "$i" in
          ours) line="$("$ours" "$dir" "$b" "$s" 5)" ;;
          candle) line="$("$candle" "$dir" "$b" "$s" 5)" ;;
          torch) line="$("$py" code/scripts/peer_torch.py "$dir" "$b" "$s" 5)" ;;
        esac
      fi
      echo "第 $r/$rounds 轮 $name $i：$line" >&2
      echo "$line" | sed "s/^{/{\"case\": \"$name\", \"round\": $r, /" >> "$results"
    done
  done
done
cp "$results" code/results/appendix-b-peers.jsonl
"$ours" --summarize code/results/appendix-b-peers.jsonl
