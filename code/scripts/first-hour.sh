#!/usr/bin/env bash
# “第一个小时”一页的数：在一份干净的克隆里，用全新的 CARGO_HOME（crates.io 的下载缓存）与工具目录，
# 依次量：装 mdbook 工具、构建本书、编译 crate（release）、第一次微调、用适配器分类、填空——各自的耗时与占用的磁盘，
# 并存下每条命令的输出。rustup 的工具链不重装（RUSTUP_HOME 照旧）。
# 结果：<工作目录>/report.txt（每步的秒数与磁盘占用）与各步的 .log；书中引用的那一次，report.txt 与后三步的 .log 复制在 code/results/first-hour/。
# 用法（在仓库根目录）：bash code/scripts/first-hour.sh [工作目录，默认 /tmp/llm-book-first-hour]
#   会删掉并重建工作目录；2 核的机器上约 10 分钟，需要能访问 crates.io。
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
work="${1:-/tmp/llm-book-first-hour}"
rm -rf "$work"
mkdir -p "$work"
export CARGO_HOME="$work/cargo-home" LLM_BOOK_TOOLS="$work/tools"
export PATH="$LLM_BOOK_TOOLS/bin:$PATH"
report="$work/report.txt"
: > "$report"
note() { printf '%s\n' "$*" | tee -a "$report"; }
size() { du -sm "$1" 2>/dev/null | cut -f1; }

# 每一步：日志名、说明、命令；记下秒数，输出存进 <日志名>.log
step() {
  local log="$work/$1.log" name="$2" start end
  shift 2
  start=$(date +%s)
  if ! "$@" > "$log" 2>&1; then
    tail -20 "$log"
    note "$name：失败（完整输出 $log）"
    exit 1
  fi
  end=$(date +%s)
  note "$name：$((end - start)) 秒"
}

note "机器：$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)，$(nproc) 核；$(date -u +%Y-%m-%d)"
note "rustc：$(rustc --version)"
git clone -q "$repo" "$work/llm-book"
cd "$work/llm-book"
note "克隆（不含 .git）：$(( $(size .) - $(size .git) )) MiB"

book_tools() {
  source code/scripts/tools.sh
  ensure_book_tools
}
step tools "装 mdbook 与 mdbook-katex" book_tools
note "  工具目录：$(size "$LLM_BOOK_TOOLS") MiB"
step book "构建本书（mdbook build）" mdbook build
step build "编译 crate（cargo build --release）" cargo build --release -p llm-book --bin llm-book
note "  target/：$(size target) MiB；CARGO_HOME：$(size "$CARGO_HOME") MiB"

cd code
bin=../target/release/llm-book
step finetune "第一次微调（finetune，默认设置）" "$bin" finetune --model models/mini-chinese-bert --out runs/demo
step classify "分类（classify）" "$bin" classify --model models/mini-chinese-bert --adapter runs/demo/adapter \
  "这本书很好看" "物流太慢了，等了一个星期"
step fill-mask "填空（fill-mask）" "$bin" fill-mask --model models/mini-chinese-bert "这本书的质量很[MASK]。"
cd ..
note "合计：克隆与 target/ $(size .) MiB，CARGO_HOME $(size "$CARGO_HOME") MiB，工具 $(size "$LLM_BOOK_TOOLS") MiB"
note "各步的输出在 $work/*.log"
