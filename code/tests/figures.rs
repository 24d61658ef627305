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
    let registered: Vec<_> = figures::all().iter().map(|f| f.file.to_string()).collect();
    let dir = figures::book_dir();
    for entry in std::fs::read_dir(&dir).expect("读取 src/figures") {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".svg") {
            assert!(
                registered.contains(&name),
                "{name} 不在 figures::all() 中，无法重新生成"
            );
        }
    }
}
