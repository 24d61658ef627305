# 各实验脚本共用的开头（source 它；调用前已 cd 到仓库根目录）：
#   bin   llm-book 可执行文件（LLM_BOOK_BIN 可指定；没有就 cargo build --release）
#   model 仓库里的中文迷你 BERT（附录 A）；脚本可在 source 之后改
#   mini  在它上面做对照实验的共同设置：批大小 16、最长 64 个记号、验证集前 300 条（3.7 节与第 4 部分）
#   run_record  跑一次 finetune，结果写进 code/results/<结果名>.json
bin="${LLM_BOOK_BIN:-target/release/llm-book}"
[ -x "$bin" ] || cargo build --release -p llm-book --bin llm-book
model="code/models/mini-chinese-bert"
mini=(--batch-size 16 --max-len 64 --valid-limit 300)

# 跑一次 finetune，结果写进 code/results/<结果名>.json。
# 已有结果就跳过（设 LLM_BOOK_RERUN=1 重跑）；失败时打印这次的日志并以非零状态退出；成功时打印测试集那一行。
# 用法：run_record 结果名（相对 code/results，不带 .json） finetune 的其余参数…
run_record() {
  local record="$1"; shift
  if [ -f "code/results/$record.json" ] && [ -z "${LLM_BOOK_RERUN:-}" ]; then
    echo "==> $record：已有结果，跳过"
    return
  fi
  local out; out="$(mktemp -d)"
  echo "==> $record"
  "$bin" finetune "$@" --out "$out" --record "$record" > "$out.log" \
    || { cat "$out.log" >&2; rm -rf "$out" "$out.log"; exit 1; }
  grep '^测试集' "$out.log"
  rm -rf "$out" "$out.log"
}
