//! 书稿的一致性检查（不需要 mdbook）：
//!
//! - 每个 `{{#include 文件:锚点}}` 指向存在的文件和存在的锚点。mdBook 遇到不存在的锚点时
//!   只会悄悄渲染一个空代码块，所以必须在这里拦住。
//! - 书中的 Rust 代码块不许标 `ignore`：每个片段都要被 `mdbook test` 编译运行。
//! - 每个图片链接指向存在的文件；SUMMARY.md 里的每一章都存在。
//! - 每一章（各部分的概览、前言、附录 C/D 除外）开头有“本章代码”一行，链接到代码文件与思考题答案。

use std::fs;
use std::path::{Path, PathBuf};

fn book_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("src")
}

/// src/ 下的书稿（不含 src/code：那是指向 code/ 的符号链接，让书里能链接到源文件）。
fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path == book_src().join("code") {
            continue;
        }
        if path.is_dir() {
            markdown_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "md") {
            out.push(path);
        }
    }
}

/// `{{#include path:anchor}}` 与 `{{#rustdoc_include …}}` 的 (路径, 锚点)。
fn includes(text: &str) -> Vec<(String, Option<String>)> {
    let mut found = Vec::new();
    for (start, _) in text.match_indices("{{#") {
        let rest = &text[start + 3..];
        let Some(end) = rest.find("}}") else { continue };
        let mut words = rest[..end].split_whitespace();
        let (Some(cmd), Some(arg)) = (words.next(), words.next()) else {
            continue;
        };
        if cmd != "include" && cmd != "rustdoc_include" {
            continue;
        }
        let mut parts = arg.splitn(2, ':');
        let path = parts.next().unwrap().to_string();
        // 行号范围（如 `file.rs:10:20`）不是锚点
        let anchor = parts
            .next()
            .filter(|a| !a.starts_with(|c: char| c.is_ascii_digit()) && !a.is_empty());
        found.push((path, anchor.map(str::to_string)));
    }
    found
}

/// 在源文件中找锚点区域，返回区域内的非空行数；锚点不存在返回 None。
fn anchor_lines(source: &str, anchor: &str) -> Option<usize> {
    let is_marker = |line: &str, kind: &str| {
        line.split(kind)
            .nth(1)
            .is_some_and(|rest| rest.trim() == anchor)
    };
    let mut lines = source.lines();
    lines.find(|l| is_marker(l, "ANCHOR:"))?;
    let mut count = 0;
    for line in lines {
        if is_marker(line, "ANCHOR_END:") {
            return Some(count);
        }
        if !line.contains("ANCHOR") && !line.trim().is_empty() {
            count += 1;
        }
    }
    None
}

#[test]
fn every_include_names_an_existing_file_and_anchor() {
    let mut files = Vec::new();
    markdown_files(&book_src(), &mut files);
    let mut problems = Vec::new();
    let mut checked = 0;
    for md in &files {
        let text = fs::read_to_string(md).unwrap();
        for (path, anchor) in includes(&text) {
            let target = md.parent().unwrap().join(&path);
            let Ok(source) = fs::read_to_string(&target) else {
                problems.push(format!("{}: 文件 {path} 不存在", md.display()));
                continue;
            };
            if let Some(anchor) = anchor {
                match anchor_lines(&source, &anchor) {
                    None => {
                        problems.push(format!("{}: {path} 中没有锚点 `{anchor}`", md.display()))
                    }
                    Some(0) => {
                        problems.push(format!("{}: {path} 的锚点 `{anchor}` 是空的", md.display()))
                    }
                    Some(_) => checked += 1,
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "悬空的 include：\n{}",
        problems.join("\n")
    );
    assert!(
        checked > 0,
        "书中没有任何按锚点 include 的代码：检查器本身可能坏了"
    );
}

#[test]
fn no_rust_block_is_ignored() {
    let mut files = Vec::new();
    markdown_files(&book_src(), &mut files);
    for md in &files {
        for (n, line) in fs::read_to_string(md).unwrap().lines().enumerate() {
            let fence = line.trim_start();
            if fence.starts_with("```rust") {
                assert!(
                    !fence.contains("ignore"),
                    "{}:{}: Rust 代码块不许标 ignore",
                    md.display(),
                    n + 1
                );
            }
        }
    }
}

#[test]
fn no_control_characters_in_the_book() {
    // 用 Python 或 shell 写入含 `\t`、`\f` 的 LaTeX 时，反斜杠序列可能被解释成控制字符（如 `\times` 变成制表符加 "imes"）
    let mut files = Vec::new();
    markdown_files(&book_src(), &mut files);
    for md in &files {
        for (n, line) in fs::read_to_string(md).unwrap().lines().enumerate() {
            if let Some(c) = line.chars().find(|c| c.is_control()) {
                panic!("{}:{}: 含控制字符 U+{:04X}", md.display(), n + 1, c as u32);
            }
        }
    }
}

#[test]
fn images_and_chapters_exist() {
    let mut files = Vec::new();
    markdown_files(&book_src(), &mut files);
    for md in &files {
        let text = fs::read_to_string(md).unwrap();
        // Markdown 链接 `](目标)`：本地目标必须存在
        for (i, _) in text.match_indices("](") {
            let rest = &text[i + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = rest[..end].split('#').next().unwrap();
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let path = md.parent().unwrap().join(target);
            assert!(path.exists(), "{}: 链接目标 {target} 不存在", md.display());
        }
    }
}

#[test]
fn every_chapter_links_its_code_and_solutions() {
    let summary = fs::read_to_string(book_src().join("SUMMARY.md")).unwrap();
    let mut chapters = Vec::new();
    for line in summary.lines() {
        let Some(start) = line.find("](") else {
            continue;
        };
        let target = &line[start + 2..line.rfind(')').unwrap()];
        let exempt = [
            "preface.md",
            "how-to-use.md",
            "appendix/solutions.md",
            "appendix/glossary.md",
            "appendix/references.md",
            "first-hour.md",
        ];
        if !target.ends_with("index.md") && !exempt.contains(&target) {
            chapters.push(target.to_string());
        }
    }
    assert!(
        chapters.len() >= 28,
        "SUMMARY.md 里只找到 {} 章",
        chapters.len()
    );
    for chapter in &chapters {
        let text = fs::read_to_string(book_src().join(chapter)).unwrap();
        let line = text.lines().nth(2).unwrap_or("");
        assert!(
            line.starts_with("> 本章代码："),
            "{chapter}: 第 3 行应是“> 本章代码：…”，实际是 {line:?}"
        );
        assert!(
            line.contains("](../code/"),
            "{chapter}: “本章代码”一行没有链接到 code/ 下的文件"
        );
        assert!(
            line.contains("solutions.md#"),
            "{chapter}: “本章代码”一行没有链接到附录 C 的答案"
        );
    }
}

#[test]
fn anchor_parser_finds_regions_and_rejects_missing() {
    let src =
        "a\n// ANCHOR: x\nfn f() {}\n// ANCHOR_END: x\n// ANCHOR: empty\n// ANCHOR_END: empty\n";
    assert_eq!(anchor_lines(src, "x"), Some(1));
    assert_eq!(anchor_lines(src, "empty"), Some(0));
    assert_eq!(anchor_lines(src, "y"), None);
    // 前缀相同的锚点名不能互相冒充
    assert_eq!(anchor_lines(src, "x2"), None);
    assert_eq!(
        includes("{{#include ../a.rs:x}} {{#include b.rs}} {{#rustdoc_include c.rs:2:5}}"),
        vec![
            ("../a.rs".into(), Some("x".into())),
            ("b.rs".into(), None),
            ("c.rs".into(), None)
        ]
    );
}
