#!/usr/bin/env bash
# 运行全部测试：格式、clippy、单元与集成测试、CUDA 路径的类型检查、构建本书、锚点检查、书中片段。
# 用法（在仓库根目录）：bash code/scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
source code/scripts/tools.sh

step() { printf '\n==> [%s] %s\n' "$1" "$2"; }

# mdbook test 的 -L 目录里，书中片段直接引用的库（extern crate）各只能有一个 rlib，
# 否则 rustc 报 E0464。依赖版本变化后旧的 rlib 会留在目录里：只保留最新的那个。
prune_stale_rlibs() {
  local deps="$1" crate newest keep f
  for crate in llm_book dfdx libm rand rand_distr nalgebra; do
    # shellcheck disable=SC2012
    newest="$(ls -t "$deps"/lib"$crate"-*.rlib 2>/dev/null | head -n 1)"
    [ -n "$newest" ] || continue
    keep="${newest%.rlib}"
    for f in "$deps"/lib"$crate"-*.rlib "$deps"/lib"$crate"-*.rmeta; do
      if [ -e "$f" ] && [ "${f%.*}" != "$keep" ]; then rm -f "$f"; fi
    done
  done
}

step 0/8 "准备工具（rustfmt、clippy、mdbook $MDBOOK_VERSION、mdbook-katex $MDBOOK_KATEX_VERSION）"
ensure_rust_components
ensure_book_tools

step 1/8 "cargo fmt --check"
cargo fmt --all -- --check

step 2/8 "cargo clippy（警告即错误）"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step 3/8 "cargo test"
cargo test --workspace

step 4/8 "CUDA 路径的类型检查（cuda,ci-check，不需要 GPU）"
cargo check -p llm-book --all-targets --features cuda,ci-check --quiet

step 5/8 "为 mdbook test 单独构建本书的库（target/book-deps）"
CARGO_TARGET_DIR=target/book-deps cargo build -p llm-book --lib --quiet
prune_stale_rlibs target/book-deps/debug/deps

step 6/8 "mdbook build"
mdbook build

step 7/8 "锚点检查：每个 {{#include 文件:锚点}} 都指向存在的锚点"
cargo test -p llm-book --test book --quiet

step 8/8 "mdbook test：编译并运行书中的每个 Rust 片段"
mdbook test -L target/book-deps/debug/deps

printf '\n全部测试通过。\n'
