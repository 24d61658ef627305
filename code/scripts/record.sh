# 各实验脚本共用（source 它）：跑一次 finetune，结果写进 code/results/<结果名>.json。
# 已有结果就跳过（设 LLM_BOOK_RERUN=1 重跑）；失败时打印这次的日志并以非零状态退出；成功时打印测试集那一行。
# 用法：run_record 结果名（相对 code/results，不带 .json） finetune 的其余参数…
# 需要变量 bin（llm-book 可执行文件的路径）。
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
