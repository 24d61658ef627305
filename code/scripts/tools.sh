# 被 serve.sh 与 test.sh 引用（source）：安装固定版本的工具，缺少时才安装。
#
# 工具装在 $LLM_BOOK_TOOLS（默认 ~/.cache/llm-book/tools）下，不覆盖读者自己装的 mdbook。
# 只需要 rustup 提供的 cargo：工具都从 crates.io 以 --locked 编译安装。

MDBOOK_VERSION=0.5.4
MDBOOK_KATEX_VERSION=0.10.0
LLM_BOOK_TOOLS="${LLM_BOOK_TOOLS:-$HOME/.cache/llm-book/tools}"
export PATH="$LLM_BOOK_TOOLS/bin:$PATH"

# ensure_tool 名字 版本：没有该版本时用 cargo install 安装
ensure_tool() {
  local name="$1" version="$2" bin="$LLM_BOOK_TOOLS/bin/$1"
  if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -qF "$version"; then
    return 0
  fi
  echo "==> 安装 $name $version 到 $LLM_BOOK_TOOLS（只需一次，需要几分钟）"
  cargo install --locked --quiet --root "$LLM_BOOK_TOOLS" --version "$version" "$name"
}

ensure_book_tools() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "错误：找不到 cargo。请先用 rustup 安装 Rust：https://rustup.rs" >&2
    exit 1
  fi
  ensure_tool mdbook "$MDBOOK_VERSION"
  ensure_tool mdbook-katex "$MDBOOK_KATEX_VERSION"
}

# rustfmt 与 clippy 是 rustup 的组件，缺少时补上
ensure_rust_components() {
  if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    echo "==> 安装 rustup 组件 rustfmt、clippy"
    rustup component add rustfmt clippy
  fi
}
