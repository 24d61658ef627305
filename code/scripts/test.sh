#!/usr/bin/env bash
# 运行全部测试：格式、clippy、单元与集成测试、CUDA 路径的类型检查、构建本书、锚点检查、书中片段。
# 用法（在仓库根目录）：bash code/scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
source code/scripts/tools.sh

step() { printf '\n==> [%s] %s\n' "$1" "$2"; }

# mdbook test 的 -L 目录里，书中片段直接引用的库（extern crate）各只能有一个 rlib，否则 rustc 报 E0464。
# 依赖或特性变化后，旧的 rlib 会留在目录里。这里按 cargo 报告的本次构建产物，删掉同名库的其他版本文件。
build_book_deps() {
  local dir=target/book-deps deps=target/book-deps/debug/deps keep f uplifted
  keep="$(CARGO_TARGET_DIR=$dir cargo build -p llm-book --lib --quiet --message-format=json \
    | grep -o '"filenames":\[[^]]*\]' | grep -o '[^"]*\.\(rlib\|rmeta\)' || true)"
  # 本 crate 的 rlib 被 cargo 报告为 target/book-deps/debug/libllm_book.rlib（deps 里那份的硬链接）
  uplifted="$dir/debug/libllm_book.rlib"
  for f in "$deps"/lib*.rlib "$deps"/lib*.rmeta; do
    [ -e "$f" ] || continue
    case "$f" in
      "$deps"/libllm_book-*)
        # 保留与 uplifted 相同的那一份（及其 .rmeta），删掉旧的
        if [ "${f%.*}.rlib" -ef "$uplifted" ]; then continue; fi
        rm -f "$f"; continue ;;
    esac
    if ! printf '%s\n' "$keep" | grep -qxF "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")"; then
      rm -f "$f"
    fi
  done
}

step 0/10 "准备工具（rustfmt、clippy、mdbook $MDBOOK_VERSION、mdbook-katex $MDBOOK_KATEX_VERSION）"
ensure_rust_components
ensure_book_tools

step 1/10 "cargo fmt --check；打过补丁的 dfdx 正好是“crates.io 原包 + code/vendor/dfdx.patch”"
cargo fmt --all -- --check
bash code/scripts/vendor-dfdx.sh --check

step 2/10 "cargo clippy（警告即错误）"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step 3/10 "cargo test（含真实检查点 all-MiniLM-L6-v2 与 transformers 的一致性，模型缓存在仓库之外）"
if minilm="$(bash code/scripts/fetch-minilm.sh)"; then
  export LLM_BOOK_MINILM="$minilm" LLM_BOOK_REQUIRE_MINILM=1
else
  printf '！无法下载 all-MiniLM-L6-v2（原因见上）：tests/minilm.rs 的一致性测试将被跳过\n'
fi
cargo test --workspace
# 融合内核按 CPU 选指令集（AVX-512 / AVX2 / SSE2）：上面用的是这台机器的最高一档，这里把较低的两档也测一遍
for simd in avx2 sse2; do
  LLM_BOOK_SIMD=$simd cargo test --workspace --lib --quiet kernels::
done

step 4/10 "CUDA 路径的类型检查与 clippy（cuda,ci-check，不需要 GPU）"
cargo clippy -p llm-book --all-targets --features cuda,ci-check --quiet -- -D warnings

step 5/10 "为 mdbook test 单独构建本书的库（target/book-deps）"
build_book_deps

step 6/10 "mdbook build"
mdbook build

step 7/10 "锚点检查：每个 {{#include 文件:锚点}} 都指向存在的锚点"
cargo test -p llm-book --test book --quiet

step 8/10 "mdbook test：编译并运行书中的每个 Rust 片段"
mdbook test -L target/book-deps/debug/deps

step 9/10 "浏览器测试：中文搜索、每页无错误与断链、公式、离线、打印视图（code/tests/browser/）"
# 需要 Node.js（≥ 18）、Chromium 与一个中文字体（Debian：apt install nodejs chromium fonts-noto-cjk）；没有 node 或 chromium 就跳过并说明，
# 没有中文字体时浏览器测试失败（汉字会画成缺字的方框）。
if ! command -v node >/dev/null 2>&1; then
  echo "跳过浏览器测试：没有找到 node（Debian：apt install nodejs）"
else
  node --test code/tests/browser/search.test.js
  if command -v "${CHROMIUM:-chromium}" >/dev/null 2>&1; then
    node code/tests/browser/browser.js book
  else
    echo "跳过浏览器测试：没有找到 chromium（Debian：apt install chromium fonts-noto-cjk；或用 CHROMIUM=浏览器路径 指定）"
  fi
fi

step 10/10 "CUDA 版本：没有 GPU 也能编译、链接，并用桩库演练（code/scripts/cuda-build.sh、run-gpu.sh --dry-run）"
# 第一次要从 PyPI 下载约 350 MB 的 CUDA 工具（缓存在 ~/.cache/llm-book/cuda-13.0），并在 target/cuda 里编译一遍（约 7 分钟）
set +e
bash code/scripts/cuda-build.sh > target/cuda-build.log 2>&1
rc=$?
set -e
if [ $rc -eq 3 ]; then
  tail -1 target/cuda-build.log
  echo "跳过 CUDA 版本的编译：下载不到 CUDA 工具"
elif [ $rc -ne 0 ]; then
  tail -40 target/cuda-build.log
  echo "CUDA 版本编译失败（完整输出：target/cuda-build.log）"
  exit 1
else
  tail -3 target/cuda-build.log
  OUT=target/cuda/dry-run bash target/cuda/bundle/run-gpu.sh --dry-run
fi

printf '\n全部测试通过。\n'
