#!/usr/bin/env bash
# 由 crates.io 的 dfdx 0.13.0 与 code/vendor/dfdx.patch 生成 code/vendor/dfdx（见 code/vendor/README.md）。
# 用法（在仓库任意位置）：bash code/scripts/vendor-dfdx.sh [--check | --write-patch]
#   （不带参数）：重新生成 code/vendor/dfdx。
#   --check：不改任何文件，只核对 code/vendor/dfdx 是否正好等于“原包 + 补丁”，不同则以非零状态退出。
#   --write-patch：改了 code/vendor/dfdx 之后，把它与原包的差别写回 code/vendor/dfdx.patch。
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
vendor="$root/code/vendor"
sha256="c6dbcb8a7363d8b434ca20bd3808ab9f6ee77e6916ca1d511f8e3c725d0b340e"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
crate="$work/dfdx-0.13.0.crate"
cached="$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/dfdx-0.13.0.crate 2>/dev/null | head -n 1 || true)"
if [ -n "$cached" ]; then
  cp "$cached" "$crate"
else
  curl -fsSL -o "$crate" https://static.crates.io/crates/dfdx/dfdx-0.13.0.crate || {
    echo "下载 dfdx-0.13.0.crate 失败：需要能访问 static.crates.io" >&2
    exit 1
  }
fi
echo "$sha256  $crate" | sha256sum -c --quiet - || { echo "dfdx-0.13.0.crate 的 SHA-256 不对" >&2; exit 1; }
tar -xzf "$crate" -C "$work"
src="$work/dfdx-0.13.0"
# 不需要的文件：版本库信息、上游的 CI 与锁文件（它的 .gitignore 会让 git 忽略 Cargo.lock 一类文件）
rm -rf "$src/.github" "$src/.cargo_vcs_info.json" "$src/.cargo-ok" "$src/Cargo.lock" "$src/.gitignore"
if [ "${1:-}" = "--write-patch" ]; then
  (cd "$work" && mv dfdx-0.13.0 a && cp -r "$vendor/dfdx" b && { diff -ruN a b || true; }) \
    | sed -E 's#^diff -ruN .*##; s#^(---|\+\+\+) ([ab]/[^\t]*)\t.*#\1 \2#' | sed '/^$/d' > "$vendor/dfdx.patch"
  echo "已写出 code/vendor/dfdx.patch（$(grep -c '^+++ ' "$vendor/dfdx.patch") 个文件）"
  exit 0
fi
(cd "$src" && patch -p1 --quiet --no-backup-if-mismatch < "$vendor/dfdx.patch")
if [ "${1:-}" = "--check" ]; then
  if diff -r "$src" "$vendor/dfdx" > "$work/diff.txt"; then
    echo "code/vendor/dfdx 与“crates.io 的 dfdx 0.13.0 + dfdx.patch”一致"
  else
    head -n 40 "$work/diff.txt" >&2
    echo "code/vendor/dfdx 与“原包 + 补丁”不一致：改 dfdx 要改 dfdx.patch，再运行本脚本" >&2
    exit 1
  fi
else
  rm -rf "$vendor/dfdx.new"
  mv "$src" "$vendor/dfdx.new"
  rm -rf "$vendor/dfdx"
  mv "$vendor/dfdx.new" "$vendor/dfdx"
  echo "已生成 code/vendor/dfdx"
fi
