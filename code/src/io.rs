//! 共用的文件工具。

use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// 原子地写文件：先写到同目录下的临时文件并刷盘，再改名覆盖目标。
///
/// 中途出错（或进程被杀）时，目标文件要么是旧内容，要么是完整的新内容，不会只写了一半。
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |tmp| {
        let mut f = fs::File::create(tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })
}

/// 通用的版本：`write(临时路径)` 把完整内容写到同目录下的临时文件，成功后再改名为 `path`。
/// 用于只能“写到某个路径”的库函数（如 dfdx 的 `save_safetensors`）。失败时删掉临时文件。
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&Path) -> io::Result<()>,
) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "路径没有文件名"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = write(&tmp).and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// 原子地写一个目录（如 PEFT 的适配器目录、HF 的模型目录）：`write(临时目录)` 写好全部文件后，
/// 整个目录再改名为 `path`；原有的同名目录被替换。中途出错时不留下只写了一部分的目录。
pub fn write_dir_atomic(
    path: &Path,
    write: impl FnOnce(&Path) -> io::Result<()>,
) -> io::Result<()> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "路径没有目录名"))?
        .to_string_lossy()
        .into_owned();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    let result = write(&tmp).and_then(|()| {
        if path.exists() {
            fs::rename(path, &old)?;
        }
        fs::rename(&tmp, path)?;
        let _ = fs::remove_dir_all(&old);
        Ok(())
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_replaces_without_leaving_temp_files() {
        let dir = std::env::temp_dir().join(format!("llm-book-io-{}", std::process::id()));
        let path = dir.join("a.txt");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_directory_write_leaves_the_old_directory() {
        let root = std::env::temp_dir().join(format!("llm-book-io-dir-{}", std::process::id()));
        let path = root.join("adapter");
        write_dir_atomic(&path, |d| fs::write(d.join("a.json"), "1")).unwrap();
        let err = write_dir_atomic(&path, |d| {
            fs::write(d.join("a.json"), "2")?;
            Err(io::Error::other("写到一半失败"))
        });
        assert!(err.is_err());
        assert_eq!(fs::read_to_string(path.join("a.json")).unwrap(), "1");
        write_dir_atomic(&path, |d| fs::write(d.join("b.json"), "3")).unwrap();
        assert!(!path.join("a.json").exists(), "整个目录被替换");
        assert_eq!(fs::read_dir(&root).unwrap().count(), 1, "不留临时目录");
        fs::remove_dir_all(&root).unwrap();
    }
}
