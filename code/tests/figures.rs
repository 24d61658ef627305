//! 书中提交的每张图都必须与代码重新生成的逐字节一致。
//!
//! 失败说明：代码（或数据）改了，但没有运行 `cargo run --release -- figures` 更新图。

use llm_book::figures;

#[test]
fn committed_figures_are_up_to_date() {
    let dir = figures::book_dir();
    let mut stale = Vec::new();
    for fig in figures::all() {
        let fresh = (fig.render)().unwrap_or_else(|e| panic!("渲染 {} 失败：{e:#}", fig.file));
        match std::fs::read_to_string(dir.join(fig.file)) {
            Ok(committed) if committed == fresh => {}
            Ok(_) => stale.push(format!("{}（内容与代码生成的不同）", fig.file)),
            Err(e) => stale.push(format!("{}（读取失败：{e}）", fig.file)),
        }
    }
    assert!(
        stale.is_empty(),
        "这些图需要用 `cargo run --release -- figures` 重新生成：{stale:?}"
    );
}

#[test]
fn every_figure_file_in_the_book_is_registered() {
    let registered: Vec<_> = (figures::all().iter().map(|f| f.file))
        .chain(figures::DIAGRAMS.iter().map(|(file, _)| *file))
        .map(String::from)
        .collect();
    let dir = figures::book_dir();
    for entry in std::fs::read_dir(&dir).expect("读取 src/figures") {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".svg") {
            assert!(
                registered.contains(&name),
                "{name} 既不在 figures::all() 中（无法重新生成），也不是 figures::DIAGRAMS 里的手写概念图"
            );
        }
    }
}

/// 手写的概念图：整幅白底（深色主题下也清楚）、字体栈里有中文字体，每张都有章节用 <img> 引用。
#[test]
fn hand_written_diagrams_are_well_formed_and_used() {
    let dir = figures::book_dir();
    let src = dir.parent().unwrap().to_path_buf();
    let mut chapters = String::new();
    let mut stack = vec![src.clone()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            // src/code 是指向 code/ 的符号链接，不是书稿
            if p.is_dir() && !p.ends_with("code") {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "md") {
                chapters += &std::fs::read_to_string(&p).unwrap();
            }
        }
    }
    for (file, about) in figures::DIAGRAMS {
        let svg = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}：{e}"));
        let size = svg
            .split_once("<svg width=\"")
            .and_then(|(_, rest)| {
                let (w, rest) = rest.split_once('"')?;
                let (_, rest) = rest.split_once("height=\"")?;
                Some((w.to_string(), rest.split_once('"')?.0.to_string()))
            })
            .unwrap_or_else(|| panic!("{file}：开头应是 <svg width=… height=…"));
        let background = format!(
            "<rect x=\"0\" y=\"0\" width=\"{}\" height=\"{}\" opacity=\"1\" fill=\"#FFFFFF\"",
            size.0, size.1
        );
        assert!(svg.contains(&background), "{file}：没有整幅的白底");
        assert!(
            svg.contains("font-family=\"Noto Sans CJK SC") && svg.trim_end().ends_with("</svg>"),
            "{file}：字体栈里没有中文字体，或文件不完整"
        );
        assert!(
            chapters.contains(&format!("figures/{file}")),
            "{file}（{about}）没有章节引用"
        );
    }
}
