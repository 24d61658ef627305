#!/usr/bin/env bash
# 生成 theme/katex/katex-offline.css：KaTeX 的样式表，字体以 base64 内嵌，读书时不访问任何 CDN。
#
# 版本必须与 mdbook-katex 0.10.0 预渲染所用的 KaTeX 一致（katex crate 0.4.6 内置 KaTeX 0.16.4）。
# 只在升级 KaTeX 时由维护者运行（需要 npm）；生成的文件已提交，读者不需要运行它。
set -euo pipefail
version=0.16.4
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "katex@$version" >/dev/null 2>&1 && tar xzf "katex-$version.tgz")
dist="$work/package/dist"
css="$(cat "$dist/katex.min.css")"
# 只保留 woff2（所有现代浏览器都支持），其余格式的 url 去掉
css="$(printf '%s' "$css" | sed -E 's/,url\(fonts\/[A-Za-z0-9_-]+\.woff\) format\("woff"\)//g; s/,url\(fonts\/[A-Za-z0-9_-]+\.ttf\) format\("truetype"\)//g')"
for font in "$dist"/fonts/*.woff2; do
  name="$(basename "$font")"
  data="$(base64 -w0 "$font")"
  css="${css//url(fonts\/$name)/url(data:font/woff2;base64,$data)}"
done
if printf '%s' "$css" | grep -q 'url(fonts/'; then
  echo "仍有未内嵌的字体引用" >&2
  exit 1
fi
{
  echo "/* KaTeX $version (MIT License, Copyright (c) 2013-2020 Khan Academy and other contributors)，字体已内嵌；由 theme/katex/build.sh 生成 */"
  printf '%s\n' "$css"
} > "$here/katex-offline.css"
cp "$work/package/LICENSE" "$here/LICENSE-KaTeX"
echo "写入 $here/katex-offline.css"
