#!/usr/bin/env bash
# 阅读本书：安装固定版本的 mdbook 与 mdbook-katex（缺少时），构建并在本机提供本书。
# 用法（在仓库根目录）：bash code/scripts/serve.sh [mdbook serve 的其他参数]
# 端口默认 3000，可用环境变量 PORT 改。
set -euo pipefail
cd "$(dirname "$0")/../.."
source code/scripts/tools.sh
ensure_book_tools
echo "==> 本书地址：http://localhost:${PORT:-3000}"
exec mdbook serve --hostname 127.0.0.1 --port "${PORT:-3000}" "$@"
