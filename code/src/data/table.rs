//! 3.8 节：用户自己的数据——从 CSV、TSV 或 JSONL 文件读入带标签的文本分类数据。
//!
//! 列名默认与 Hugging Face datasets 一致（`text`、`label`，句对任务再加一列）。CSV 与 TSV 的解析
//! （引号、字段里的分隔符与换行）交给 `csv` crate，本模块只负责挑列、检查每一行，并在出错时指出
//! 文件、行号与列名。标签先按原样保存为字符串，再由 [`LabelSet`] 编号：整数标签就用那个整数，
//! 字符串标签排序后编号（同 transformers 的 `run_glue.py`）。

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Excel 等程序写在 UTF-8 文件开头的字节顺序标记（BOM）。
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";
/// 错误信息里最多列出多少个名字或编号，免得几千类时刷屏。
const MAX_LISTED: usize = 20;
/// 字节不是合法 UTF-8 时的说明：中文用户最常见的原因是 Excel 存成了 GBK。
const INVALID_UTF8: &str = "不是合法的 UTF-8（文件可能是 GBK 编码，请另存为 UTF-8）";

/// 数据文件的格式，由扩展名决定（不区分大小写）。
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableFormat {
    /// `.csv`：逗号分隔，第一行是表头。
    Csv,
    /// `.tsv`：制表符分隔，第一行是表头；引号规则与 CSV 相同（与 pandas 一致）。
    Tsv,
    /// `.jsonl` 或 `.json`：每行一个 JSON 对象（JSON Lines），空行跳过。
    Jsonl,
}

impl TableFormat {
    /// 由扩展名判断格式；不认识的扩展名是错误。
    pub fn from_path(path: &Path) -> Result<TableFormat, TableError> {
        let ext = path.extension().and_then(|e| e.to_str());
        match ext.map(str::to_ascii_lowercase).as_deref() {
            Some("csv") => Ok(TableFormat::Csv),
            Some("tsv") => Ok(TableFormat::Tsv),
            Some("jsonl" | "json") => Ok(TableFormat::Jsonl),
            _ => Err(TableError::file(
                path,
                "无法由扩展名判断格式，支持 .csv、.tsv、.jsonl 与 .json（每行一个 JSON 对象）",
            )),
        }
    }
}

/// 要读的列名（JSONL 里是键名）。
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Columns {
    /// 文本列，默认 `text`。
    pub text: String,
    /// 句对任务的第二段文本（如 `sentence2`）；`None` 表示单句任务。
    pub text_pair: Option<String>,
    /// 标签列，默认 `label`。
    pub label: String,
}

impl Default for Columns {
    /// Hugging Face datasets 的惯用列名：`text` 与 `label`，没有第二段文本。
    fn default() -> Self {
        let (text, label) = ("text".to_string(), "label".to_string());
        Columns {
            text,
            text_pair: None,
            label,
        }
    }
}

/// 读入的一行数据。
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// 文本，按原样保存（不去首尾空白）。
    pub text: String,
    /// 第二段文本；只有 [`Columns::text_pair`] 为 `Some` 时才有。
    pub text_pair: Option<String>,
    /// 原始标签（去掉首尾空白）；JSONL 里的整数标签转成十进制字符串。
    pub label: String,
    /// 这一行在文件中的行号（从 1 起；CSV 里跨行的记录取它开始的那一行）。
    pub line: usize,
}

// ANCHOR: read_table
/// 读入 `path`：格式由扩展名决定，按 `columns` 挑出文本与标签。
///
/// CSV/TSV 的第一行是表头；JSONL 每行一个对象、空行跳过；文件开头的 UTF-8 BOM 会被去掉。
/// 任何一行有问题（字段数不对、文本或标签为空、不是 UTF-8、JSON 无效、缺键、类型不对）都立即
/// 返回错误，指出文件、行号与列名；没有数据行也是错误。
pub fn read_table(path: &Path, columns: &Columns) -> Result<Vec<Row>, TableError> {
    let format = TableFormat::from_path(path)?;
    let bytes =
        std::fs::read(path).map_err(|e| TableError::file(path, format!("无法读取：{e}")))?;
    let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(&bytes);
    let rows = match format {
        TableFormat::Csv => read_delimited(path, bytes, b',', columns)?,
        TableFormat::Tsv => read_delimited(path, bytes, b'\t', columns)?,
        TableFormat::Jsonl => read_jsonl(path, bytes, columns)?,
    };
    if rows.is_empty() {
        return Err(TableError::file(path, "没有任何数据行"));
    }
    Ok(rows)
}
// ANCHOR_END: read_table

/// 读 CSV 或 TSV：引号、字段内的分隔符与换行由 `csv` crate 处理。
fn read_delimited(
    path: &Path,
    bytes: &[u8],
    delimiter: u8,
    columns: &Columns,
) -> Result<Vec<Row>, TableError> {
    // 从内存里的字节读，`csv` 只会在表头转成字符串时出错（不是 UTF-8）
    let csv_error = |e: csv::Error| match e.kind() {
        csv::ErrorKind::Utf8 { .. } => TableError::at(path, 1, None, format!("表头{INVALID_UTF8}")),
        _ => TableError::file(path, format!("无法读取：{e}")),
    };
    // 字段数由下面自己检查（flexible），好在错误里写出缺的是哪一列
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(true)
        .from_reader(bytes);
    let header: Vec<String> = reader
        .headers()
        .map_err(csv_error)?
        .iter()
        .map(|h| h.trim().into())
        .collect();
    if header.is_empty() {
        return Ok(Vec::new()); // 空文件：由调用者报“没有任何数据行”
    }
    let find = |name: &str| {
        let reason = || {
            format!(
                "表头没有列 {name}（表头的列：{}）",
                list(&header, header.len())
            )
        };
        let at = header.iter().position(|h| h == name);
        at.ok_or_else(|| TableError::file(path, reason()))
    };
    let text_at = find(&columns.text)?;
    let pair_at = columns
        .text_pair
        .as_deref()
        .map(|name| find(name).map(|at| (at, name)));
    let pair_at = pair_at.transpose()?;
    let label_at = find(&columns.label)?;

    // 行号由记录开头的字节位置数出来，不用 `Position::line()`：遇到 Windows 的 CRLF 换行它会
    // 少算（BurntSushi/rust-csv#395），而 Excel 导出的正是 CRLF。字节位置可能停在上一行残留的
    // `\n` 或空行上，先跳过这些换行符再数；位置单调增加，整个文件只数一遍。
    let (mut counted, mut line) = (0, 1);
    let mut rows = Vec::new();
    for record in reader.byte_records() {
        let record = record.map_err(csv_error)?;
        let mut start = record
            .position()
            .map_or(counted, |p| p.byte() as usize)
            .max(counted);
        while matches!(bytes.get(start), Some(b'\r' | b'\n')) {
            start += 1;
        }
        let start = start.min(bytes.len());
        line += bytes[counted..start]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        counted = start;

        if record.len() != header.len() {
            // 字段少了：指出第一个缺的列；字段多了：没有哪一列可指
            let missing = header.get(record.len()).map(String::as_str);
            let (found, expected) = (record.len(), header.len());
            let reason = format!(
                "有 {found} 个字段，表头有 {expected} 列（文本里含分隔符或换行时要用双引号括起来）"
            );
            return Err(TableError::at(path, line, missing, reason));
        }
        let field = |at: usize, name: &str| match std::str::from_utf8(&record[at]) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => Err(TableError::at(path, line, Some(name), INVALID_UTF8)),
        };
        let text = field(text_at, &columns.text)?;
        let text_pair = pair_at.map(|(at, name)| field(at, name)).transpose()?;
        let label = field(label_at, &columns.label)?;
        rows.push(check_row(path, columns, line, text, text_pair, label)?);
    }
    Ok(rows)
}

/// 读 JSONL：每个非空行一个 JSON 对象。
fn read_jsonl(path: &Path, bytes: &[u8], columns: &Columns) -> Result<Vec<Row>, TableError> {
    let mut rows = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let err = |column: Option<&str>, reason: String| TableError::at(path, line, column, reason);
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = std::str::from_utf8(raw).map_err(|_| err(None, INVALID_UTF8.into()))?;
        if text.trim().is_empty() {
            continue;
        }
        if rows.is_empty() && text.trim_start().starts_with('[') {
            return Err(TableError::file(
                path,
                "整个文件是一个 JSON 数组，这里要的是每行一个对象（JSON Lines），可用 `jq -c '.[]'` 转换",
            ));
        }
        let value: Value = serde_json::from_str(text).map_err(|e| err(None, json_error(&e)))?;
        let object = value
            .as_object()
            .ok_or_else(|| err(None, wrong_type("一个 JSON 对象", &value)))?;
        let get = |key: &str| {
            let keys: Vec<&String> = object.keys().collect();
            let reason = || format!("缺少这个键（这一行的键：{}）", list(&keys, keys.len()));
            object.get(key).ok_or_else(|| err(Some(key), reason()))
        };
        let string = |key: &str| -> Result<String, TableError> {
            let value = get(key)?;
            let reason = || wrong_type("字符串", value);
            value
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| err(Some(key), reason()))
        };
        let text = string(&columns.text)?;
        let text_pair = columns.text_pair.as_deref().map(string).transpose()?;
        let label = match get(&columns.label)? {
            Value::String(s) => s.clone(),
            Value::Number(n) if !n.is_f64() => n.to_string(),
            other => return Err(err(Some(&columns.label), wrong_type("字符串或整数", other))),
        };
        rows.push(check_row(path, columns, line, text, text_pair, label)?);
    }
    Ok(rows)
}

/// 文本（及第二段文本）与标签都不能为空（只有空白也算空）；标签去掉首尾空白。
fn check_row(
    path: &Path,
    columns: &Columns,
    line: usize,
    text: String,
    text_pair: Option<String>,
    label: String,
) -> Result<Row, TableError> {
    let empty = |column: &str, reason| Err(TableError::at(path, line, Some(column), reason));
    if text.trim().is_empty() {
        return empty(&columns.text, "文本为空");
    }
    if let (Some(pair), Some(name)) = (&text_pair, &columns.text_pair) {
        if pair.trim().is_empty() {
            return empty(name, "文本为空");
        }
    }
    let label = label.trim().to_string();
    if label.is_empty() {
        return empty(&columns.label, "标签为空");
    }
    Ok(Row {
        text,
        text_pair,
        label,
        line,
    })
}

// ANCHOR: label_set
/// 标签集合：编号 `id` 与标签名一一对应，`names[id]` 是第 `id` 类的名字。
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelSet {
    names: Vec<String>,
    ids: HashMap<String, usize>,
}

impl LabelSet {
    // ANCHOR: labels
    /// 由数据里出现的标签建立编号：
    ///
    /// - 全部标签都是非负整数（规范的十进制写法，如 `0`、`12`，不含 `07`）：编号就是这些整数，
    ///   必须恰好覆盖 `0..n`，有空缺是错误；
    /// - 否则按字符串处理：去重后排序（`label_list.sort()`），按顺序编号。
    ///
    /// 分类至少需要 2 个类别。
    pub fn from_rows(rows: &[Row]) -> Result<LabelSet, TableError> {
        let distinct: BTreeSet<&str> = rows.iter().map(|r| r.label.as_str()).collect();
        if distinct.len() < 2 {
            let labels: Vec<&str> = distinct.into_iter().collect();
            return Err(too_few_labels(&labels));
        }
        let integers: Option<BTreeSet<usize>> = distinct.iter().map(|s| parse_id(s)).collect();
        let names = match integers {
            Some(ids) => {
                let (count, max) = (ids.len(), *ids.last().expect("至少有 2 个标签"));
                if max + 1 != count {
                    // 只找前几个空缺：max 可能极大，不能把 0..=max 全走一遍
                    let missing: Vec<usize> = (0..=max)
                        .filter(|i| !ids.contains(i))
                        .take(MAX_LISTED)
                        .collect();
                    return Err(TableError::Labels(format!(
                        "整数标签应从 0 连续编号到 n-1：{count} 个不同的标签里最大的是 {max}，缺少 {}",
                        list(&missing, max + 1 - count)
                    )));
                }
                (0..count).map(|i| i.to_string()).collect()
            }
            None => distinct.iter().map(|s| s.to_string()).collect(),
        };
        LabelSet::from_names(names)
    }
    // ANCHOR_END: labels

    /// 由现成的名字表建立（如模型 `config.json` 的 `id2label`，第 `i` 个名字即第 `i` 类）。
    /// 名字不能为空、不能重复，且至少 2 个。
    pub fn from_names(names: Vec<String>) -> Result<LabelSet, TableError> {
        if names.len() < 2 {
            return Err(too_few_labels(&names));
        }
        let mut ids = HashMap::with_capacity(names.len());
        for (id, name) in names.iter().enumerate() {
            if name.trim().is_empty() {
                return Err(TableError::Labels(format!("第 {id} 类的标签名为空")));
            }
            if let Some(first) = ids.insert(name.clone(), id) {
                let reason = format!("标签名 {name} 重复：第 {first} 类与第 {id} 类");
                return Err(TableError::Labels(reason));
            }
        }
        Ok(LabelSet { names, ids })
    }

    /// 类别数。
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// 总是 `false`：构造时已保证至少 2 个类别（有 `len` 就该有它，clippy 的要求）。
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// 第 `id` 类的名字；`id` 越界时 panic。
    pub fn name(&self, id: usize) -> &str {
        &self.names[id]
    }

    /// 标签名对应的编号；不认识的标签返回 `None`。
    pub fn id(&self, label: &str) -> Option<usize> {
        self.ids.get(label).copied()
    }

    /// 全部名字，按编号排列。
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// 把每行的标签换成编号；不认识的标签是错误，指出文件 `path`、行号与已知标签。
    pub fn encode(&self, path: &Path, rows: &[Row]) -> Result<Vec<usize>, TableError> {
        let known = list(&self.names, self.names.len());
        let unknown = |row: &Row| {
            let reason = format!("标签 {} 不在已知标签中（已知：{known}）", row.label);
            TableError::at(path, row.line, None, reason)
        };
        rows.iter()
            .map(|row| self.id(&row.label).ok_or_else(|| unknown(row)))
            .collect()
    }

    /// transformers 写进 `config.json` 的 `id2label`：键是 `"0"`、`"1"`……
    pub fn id2label(&self) -> BTreeMap<String, String> {
        self.names
            .iter()
            .enumerate()
            .map(|(i, name)| (i.to_string(), name.clone()))
            .collect()
    }

    /// transformers 写进 `config.json` 的 `label2id`。
    pub fn label2id(&self) -> BTreeMap<String, usize> {
        self.names
            .iter()
            .enumerate()
            .map(|(i, name)| (name.clone(), i))
            .collect()
    }
}
// ANCHOR_END: label_set

/// 规范写法的非负整数（`0`、`12`；不接受 `07`、`+1`），否则 `None`。
fn parse_id(label: &str) -> Option<usize> {
    let id: usize = label.parse().ok()?;
    (id.to_string() == label).then_some(id)
}

/// 读数据或编号标签时的错误。位置是结构化的字段，原因是给人读的中文说明。
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableError {
    /// 数据文件里的问题；`line`（从 1 起）与 `column` 能定位时给出。
    File {
        path: PathBuf,
        line: Option<usize>,
        column: Option<String>,
        reason: String,
    },
    /// 标签集合的问题：少于 2 类、整数标签有空缺、名字为空或重复。
    Labels(String),
    /// `--train-limit` 不在 1 到训练集条数之间。
    TrainLimit {
        /// 要的条数。
        asked: usize,
        /// 训练集的条数。
        available: usize,
    },
}

impl TableError {
    /// 整个文件的问题（不属于某一行）。
    fn file(path: &Path, reason: impl Into<String>) -> TableError {
        let reason = reason.into();
        TableError::File {
            path: path.into(),
            line: None,
            column: None,
            reason,
        }
    }

    /// 第 `line` 行（`column` 列）的问题。
    fn at(path: &Path, line: usize, column: Option<&str>, reason: impl Into<String>) -> TableError {
        let (column, reason) = (column.map(str::to_string), reason.into());
        TableError::File {
            path: path.into(),
            line: Some(line),
            column,
            reason,
        }
    }
}

impl fmt::Display for TableError {
    /// `data.csv 第 7 行，列 label：标签为空`；整个文件的问题没有行与列。
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableError::File {
                path,
                line,
                column,
                reason,
            } => {
                write!(f, "{}", path.display())?;
                if let Some(line) = line {
                    write!(f, " 第 {line} 行")?;
                }
                if let Some(column) = column {
                    write!(f, "，列 {column}")?;
                }
                write!(f, "：{reason}")
            }
            TableError::Labels(reason) => f.write_str(reason),
            TableError::TrainLimit { asked, available } => write!(
                f,
                "--train-limit 是 {asked}，应在 1 到训练集的条数 {available} 之间"
            ),
        }
    }
}

impl std::error::Error for TableError {}

/// 分类至少要 2 类：`labels` 是实际出现的（不到 2 个）标签。
fn too_few_labels<T: fmt::Display>(labels: &[T]) -> TableError {
    let n = labels.len();
    TableError::Labels(format!(
        "分类至少需要 2 个类别，实际只有 {n} 个（{}）",
        list(labels, n)
    ))
}

/// serde_json 的原文末尾是 “at line 1 column N”：只解析了一行，行号总是 1，换成该行内的字节位置。
fn json_error(e: &serde_json::Error) -> String {
    let message = e.to_string();
    let message = message
        .rfind(" at line ")
        .map_or(&*message, |i| &message[..i]);
    let column = e.column();
    format!("不是合法的 JSON，错在该行第 {column} 个字节附近（serde_json：{message}）")
}

/// “应是 `expected`，实际是……”，用中文描述 `value` 的类型。
fn wrong_type(expected: &str, value: &Value) -> String {
    let found = match value {
        Value::Null => "空值 null".to_string(),
        Value::Bool(b) => format!("布尔值 {b}"),
        Value::Number(n) if n.is_f64() => format!("小数 {n}"),
        Value::Number(n) => format!("数字 {n}"),
        Value::String(_) => "字符串".to_string(),
        Value::Array(_) => "数组".to_string(),
        Value::Object(_) => "对象".to_string(),
    };
    format!("应是{expected}，实际是{found}")
}

/// 把列表写成 `a, b, c`；超过 [`MAX_LISTED`] 项时截断，并注明共 `total` 项。
fn list<T: fmt::Display>(items: &[T], total: usize) -> String {
    let shown: Vec<String> = items.iter().take(MAX_LISTED).map(T::to_string).collect();
    if total > shown.len() {
        format!("{} …（共 {total} 个）", shown.join(", "))
    } else {
        shown.join(", ")
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    /// 测试用的临时文件：放在独立的临时目录里，离开作用域时连目录一起删掉。
    struct TempFile {
        _dir: tempfile::TempDir,
        path: PathBuf,
    }

    /// 在一个新的临时目录里写入 `name`，内容是 `contents`。
    fn write(name: &str, contents: &[u8]) -> TempFile {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        TempFile { _dir: dir, path }
    }

    fn read(file: &TempFile) -> Vec<Row> {
        read_table(&file.path, &Columns::default()).unwrap()
    }

    /// 读取必须失败，返回错误信息。
    fn read_err(file: &TempFile, columns: &Columns) -> String {
        match read_table(&file.path, columns) {
            Ok(rows) => panic!("应当出错，却读到了 {rows:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// 期望的错误信息：`<路径><rest>`。
    fn msg(file: &TempFile, rest: &str) -> String {
        format!("{}{rest}", file.path.display())
    }

    fn row(label: &str, line: usize) -> Row {
        Row {
            text: "t".into(),
            text_pair: None,
            label: label.into(),
            line,
        }
    }

    fn labels(labels: &[&str]) -> Vec<Row> {
        labels
            .iter()
            .enumerate()
            .map(|(i, l)| row(l, i + 2))
            .collect()
    }

    #[test]
    fn format_from_extension() {
        let format = |p: &str| TableFormat::from_path(Path::new(p));
        assert_eq!(format("a/data.csv"), Ok(TableFormat::Csv));
        assert_eq!(format("DATA.CSV"), Ok(TableFormat::Csv));
        assert_eq!(format("x.tsv"), Ok(TableFormat::Tsv));
        assert_eq!(format("x.jsonl"), Ok(TableFormat::Jsonl));
        assert_eq!(format("x.json"), Ok(TableFormat::Jsonl));
        let err = format("data.txt").unwrap_err().to_string();
        assert_eq!(
            err,
            "data.txt：无法由扩展名判断格式，支持 .csv、.tsv、.jsonl 与 .json（每行一个 JSON 对象）"
        );
        assert!(format("noext").is_err());
    }

    #[test]
    fn default_columns_are_hugging_face_names() {
        let c = Columns::default();
        assert_eq!(
            (c.text.as_str(), c.text_pair, c.label.as_str()),
            ("text", None, "label")
        );
    }

    #[test]
    fn csv_with_quoted_comma_newline_lf_and_crlf() {
        let lf =
            "text,label\n\"你好, 世界\",pos\n\"第一行\n第二行\",neg\n\n  留着空白 ,\" pos \"\n";
        for contents in [lf.to_string(), lf.replace('\n', "\r\n")] {
            let f = write("data.csv", contents.as_bytes());
            let newline = if contents.contains('\r') {
                "\r\n"
            } else {
                "\n"
            };
            let rows = read(&f);
            assert_eq!(
                rows,
                vec![
                    Row {
                        text: "你好, 世界".into(),
                        text_pair: None,
                        label: "pos".into(),
                        line: 2
                    },
                    Row {
                        text: format!("第一行{newline}第二行"),
                        text_pair: None,
                        label: "neg".into(),
                        line: 3
                    },
                    // 空行被跳过；文本按原样保存，标签去掉首尾空白
                    Row {
                        text: "  留着空白 ".into(),
                        text_pair: None,
                        label: "pos".into(),
                        line: 6
                    },
                ]
            );
        }
    }

    #[test]
    fn crlf_error_reports_the_physical_line() {
        // csv 的 Position::line() 在这里会报第 3 行（rust-csv#395）
        let f = write("excel.csv", b"text,label\r\n\"a\r\nb\",1\r\n\r\nc,\r\n");
        assert_eq!(
            read_err(&f, &Columns::default()),
            msg(&f, " 第 5 行，列 label：标签为空")
        );
    }

    #[test]
    fn tsv_keeps_commas_and_reads_extra_columns() {
        let f = write("data.tsv", b"id\ttext\tlabel\n1\ta, b\t0\n2\tc\t1\n");
        let rows = read(&f);
        assert_eq!(
            rows.iter().map(|r| r.text.as_str()).collect::<Vec<_>>(),
            ["a, b", "c"]
        );
        assert_eq!(
            rows.iter().map(|r| r.label.as_str()).collect::<Vec<_>>(),
            ["0", "1"]
        );
        assert_eq!(rows.iter().map(|r| r.line).collect::<Vec<_>>(), [2, 3]);
    }

    #[test]
    fn jsonl_integer_labels_skip_blank_lines() {
        let f = write(
            "train.jsonl",
            b"{\"text\": \"good\", \"label\": 1}\n\n   \n{\"text\": \"bad\", \"label\": 0, \"x\": null}\r\n",
        );
        let rows = read(&f);
        assert_eq!(
            rows,
            vec![
                Row {
                    text: "good".into(),
                    text_pair: None,
                    label: "1".into(),
                    line: 1
                },
                Row {
                    text: "bad".into(),
                    text_pair: None,
                    label: "0".into(),
                    line: 4
                },
            ]
        );
        let set = LabelSet::from_rows(&rows).unwrap();
        assert_eq!(set.names(), ["0", "1"]);
        assert_eq!(set.encode(&f.path, &rows).unwrap(), [1, 0]);
    }

    #[test]
    fn jsonl_string_labels() {
        let f = write(
            "train.json",
            "{\"text\":\"好\",\"label\":\"正面\"}\n{\"text\":\"差\",\"label\":\"负面\"}\n"
                .as_bytes(),
        );
        let rows = read(&f);
        assert_eq!(rows[0].label, "正面");
        assert_eq!(rows[1].text, "差");
    }

    #[test]
    fn text_pair_columns() {
        let columns = Columns {
            text: "sentence1".into(),
            text_pair: Some("sentence2".into()),
            label: "label".into(),
        };
        let f = write(
            "pairs.csv",
            b"sentence1,sentence2,label\nA man,A person,entailment\n",
        );
        let rows = read_table(&f.path, &columns).unwrap();
        assert_eq!(rows[0].text, "A man");
        assert_eq!(rows[0].text_pair.as_deref(), Some("A person"));
        let f = write(
            "pairs.jsonl",
            b"{\"sentence1\":\"a\",\"sentence2\":\"b\",\"label\":2}\n",
        );
        let rows = read_table(&f.path, &columns).unwrap();
        assert_eq!(
            (rows[0].text_pair.as_deref(), rows[0].label.as_str()),
            (Some("b"), "2")
        );
        // 单句读法不会凭空带出第二段
        let rows = read_table(
            &f.path,
            &Columns {
                text: "sentence1".into(),
                ..Columns::default()
            },
        );
        assert_eq!(rows.unwrap()[0].text_pair, None);
    }

    #[test]
    fn utf8_bom_is_stripped() {
        let f = write("excel.csv", "\u{feff}text,label\n好,1\n差,0\n".as_bytes());
        let rows = read(&f);
        assert_eq!((rows[0].text.as_str(), rows[0].line), ("好", 2));
        let f = write(
            "bom.jsonl",
            "\u{feff}{\"text\":\"a\",\"label\":\"x\"}\n".as_bytes(),
        );
        assert_eq!(read(&f)[0].label, "x");
    }

    #[test]
    fn missing_column_lists_header() {
        let f = write("data.csv", b"sentence,label\nhi,1\n");
        assert_eq!(
            read_err(&f, &Columns::default()),
            msg(&f, "：表头没有列 text（表头的列：sentence, label）")
        );
        let pair = Columns {
            text_pair: Some("hypothesis".into()),
            ..Columns::default()
        };
        let f = write("data.tsv", b"text\tlabel\nhi\t1\n");
        assert_eq!(
            read_err(&f, &pair),
            msg(&f, "：表头没有列 hypothesis（表头的列：text, label）")
        );
    }

    #[test]
    fn wrong_field_count() {
        let f = write("data.csv", b"text,label\nok,1\nhello\n");
        assert_eq!(
            read_err(&f, &Columns::default()),
            msg(&f, " 第 3 行，列 label：有 1 个字段，表头有 2 列（文本里含分隔符或换行时要用双引号括起来）")
        );
        let f = write("data.csv", b"text,label\nhello, world,1\n");
        assert_eq!(
            read_err(&f, &Columns::default()),
            msg(
                &f,
                " 第 2 行：有 3 个字段，表头有 2 列（文本里含分隔符或换行时要用双引号括起来）"
            )
        );
    }

    #[test]
    fn empty_text_and_label() {
        let f = write("data.csv", b"text,label\na,1\nb,0\nc,1\nd,0\ne,1\nf,  \n");
        assert_eq!(
            read_err(&f, &Columns::default()),
            msg(&f, " 第 7 行，列 label：标签为空")
        );
        // 位置是结构化的字段，调用者不必解析信息
        assert_eq!(
            read_table(&f.path, &Columns::default()).unwrap_err(),
            TableError::File {
                path: f.path.clone(),
                line: Some(7),
                column: Some("label".into()),
                reason: "标签为空".into()
            }
        );
        let f = write("data.tsv", b"text\tlabel\n \t1\n");
        assert_eq!(
            read_err(&f, &Columns::default()),
            msg(&f, " 第 2 行，列 text：文本为空")
        );
        let pair = Columns {
            text_pair: Some("s2".into()),
            ..Columns::default()
        };
        let f = write("data.jsonl", b"{\"text\":\"a\",\"s2\":\"\",\"label\":1}\n");
        assert_eq!(read_err(&f, &pair), msg(&f, " 第 1 行，列 s2：文本为空"));
        let f = write("data.jsonl", b"{\"text\":\"a\",\"label\":\"\"}\n");
        assert_eq!(
            read_err(&f, &Columns::default()),
            msg(&f, " 第 1 行，列 label：标签为空")
        );
    }

    #[test]
    fn invalid_utf8() {
        // “你好”的 GBK 编码
        let f = write("gbk.csv", b"text,label\nok,1\n\xC4\xE3\xBA\xC3,0\n");
        assert_eq!(
            read_err(&f, &Columns::default()),
            msg(
                &f,
                " 第 3 行，列 text：不是合法的 UTF-8（文件可能是 GBK 编码，请另存为 UTF-8）"
            )
        );
        let f = write("gbk.csv", b"\xCE\xC4\xB1\xBE,label\nok,1\n");
        assert_eq!(
            read_err(&f, &Columns::default()),
            msg(
                &f,
                " 第 1 行：表头不是合法的 UTF-8（文件可能是 GBK 编码，请另存为 UTF-8）"
            )
        );
        let f = write(
            "gbk.jsonl",
            b"{\"text\":\"a\",\"label\":1}\n{\"text\":\"\xC4\xE3\",\"label\":1}\n",
        );
        assert!(
            read_err(&f, &Columns::default()).starts_with(&msg(&f, " 第 2 行：不是合法的 UTF-8"))
        );
    }

    #[test]
    fn invalid_json() {
        let f = write(
            "data.jsonl",
            b"{\"text\":\"a\",\"label\":1}\n{\"text\": \"b\", \"label\": }\n",
        );
        let err = read_err(&f, &Columns::default());
        assert_eq!(
            err,
            msg(
                &f,
                " 第 2 行：不是合法的 JSON，错在该行第 24 个字节附近（serde_json：expected value）"
            )
        );
        let f = write("data.jsonl", b"{\"text\":\"a\",\"label\":1}\n[1, 2]\n");
        assert_eq!(
            read_err(&f, &Columns::default()),
            msg(&f, " 第 2 行：应是一个 JSON 对象，实际是数组")
        );
        let f = write("data.json", b"[\n  {\"text\": \"a\", \"label\": 1}\n]\n");
        assert_eq!(
            read_err(&f, &Columns::default()),
            msg(
                &f,
                "：整个文件是一个 JSON 数组，这里要的是每行一个对象（JSON Lines），可用 `jq -c '.[]'` 转换"
            )
        );
    }

    #[test]
    fn missing_key_and_wrong_types() {
        let f = write("data.jsonl", b"{\"text\":\"a\",\"y\":1}\n");
        assert_eq!(
            read_err(&f, &Columns::default()),
            msg(&f, " 第 1 行，列 label：缺少这个键（这一行的键：text, y）")
        );
        let cases: [(&[u8], &str); 6] = [
            (
                b"{\"text\":\"a\",\"label\":true}",
                "列 label：应是字符串或整数，实际是布尔值 true",
            ),
            (
                b"{\"text\":\"a\",\"label\":null}",
                "列 label：应是字符串或整数，实际是空值 null",
            ),
            (
                b"{\"text\":\"a\",\"label\":1.5}",
                "列 label：应是字符串或整数，实际是小数 1.5",
            ),
            (
                b"{\"text\":\"a\",\"label\":[1]}",
                "列 label：应是字符串或整数，实际是数组",
            ),
            (
                b"{\"text\":\"a\",\"label\":{}}",
                "列 label：应是字符串或整数，实际是对象",
            ),
            (
                b"{\"text\":3,\"label\":1}",
                "列 text：应是字符串，实际是数字 3",
            ),
        ];
        for (line, expected) in cases {
            let mut contents = b"{\"text\":\"ok\",\"label\":0}\n".to_vec();
            contents.extend_from_slice(line);
            let f = write("data.jsonl", &contents);
            assert_eq!(
                read_err(&f, &Columns::default()),
                msg(&f, &format!(" 第 2 行，{expected}"))
            );
        }
    }

    #[test]
    fn negative_integer_label_is_kept_as_string() {
        let f = write("data.jsonl", b"{\"text\":\"a\",\"label\":-1}\n");
        assert_eq!(read(&f)[0].label, "-1");
    }

    #[test]
    fn files_without_data_rows() {
        for (name, contents) in [
            ("empty.csv", &b""[..]),
            ("header.csv", b"text,label\n"),
            ("bom.tsv", b"\xEF\xBB\xBF"),
            ("blank.jsonl", b"\n  \n\r\n"),
        ] {
            let f = write(name, contents);
            assert_eq!(
                read_err(&f, &Columns::default()),
                msg(&f, "：没有任何数据行")
            );
        }
    }

    #[test]
    fn missing_file_is_io_error() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("none.csv");
        let err = read_table(&path, &Columns::default()).unwrap_err();
        assert!(matches!(err, TableError::File { line: None, .. }));
        assert!(err
            .to_string()
            .starts_with(&format!("{}：无法读取：", path.display())));
    }

    #[test]
    fn integer_labels_become_ids() {
        let set = LabelSet::from_rows(&labels(&["2", "0", "1", "2"])).unwrap();
        assert_eq!(set.names(), ["0", "1", "2"]);
        assert_eq!((set.len(), set.is_empty()), (3, false));
        assert_eq!(
            (set.id("2"), set.name(2), set.id("3")),
            (Some(2), "2", None)
        );
    }

    #[test]
    fn integer_label_gap_is_an_error() {
        let err = LabelSet::from_rows(&labels(&["0", "2", "2"]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "整数标签应从 0 连续编号到 n-1：2 个不同的标签里最大的是 2，缺少 1"
        );
        let err = LabelSet::from_rows(&labels(&["1", "2"]))
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("最大的是 2，缺少 0"), "{err}");
        // 极大的标签：只列出前几个空缺，不会把 0..=max 走一遍
        let err = LabelSet::from_rows(&labels(&["0", "1000000000000"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("缺少 1, 2, 3,"), "{err}");
        assert!(err.ends_with(", 20 …（共 999999999999 个）"), "{err}");
    }

    #[test]
    fn string_labels_are_sorted() {
        let rows = labels(&["pos", "neutral", "neg", "pos"]);
        let set = LabelSet::from_rows(&rows).unwrap();
        assert_eq!(set.names(), ["neg", "neutral", "pos"]);
        assert_eq!(set.encode(Path::new("d.csv"), &rows).unwrap(), [2, 1, 0, 2]);
        let id2label = set.id2label();
        assert_eq!(id2label.get("0").map(String::as_str), Some("neg"));
        assert_eq!(id2label.keys().collect::<Vec<_>>(), ["0", "1", "2"]);
        assert_eq!(set.label2id().get("pos"), Some(&2));
        assert_eq!(
            serde_json::to_string(&set.label2id()).unwrap(),
            r#"{"neg":0,"neutral":1,"pos":2}"#
        );
        // 有一个不是规范整数（"07"），整体按字符串排序
        let set = LabelSet::from_rows(&labels(&["1", "07", "0"])).unwrap();
        assert_eq!(set.names(), ["0", "07", "1"]);
        // 数字字符串按字符串序，而不是数值序（与 run_glue.py 对字符串标签的 sort() 一致）
        let set = LabelSet::from_rows(&labels(&["10", "9", "x"])).unwrap();
        assert_eq!(set.names(), ["10", "9", "x"]);
    }

    #[test]
    fn single_label_is_an_error() {
        let f = write("one.csv", b"text,label\na,pos\nb,pos\n");
        let rows = read(&f);
        let err = LabelSet::from_rows(&rows).unwrap_err();
        assert_eq!(
            err.to_string(),
            "分类至少需要 2 个类别，实际只有 1 个（pos）"
        );
        assert!(LabelSet::from_rows(&[]).is_err());
    }

    #[test]
    fn from_names_checks_duplicates() {
        let set = LabelSet::from_names(vec!["NEGATIVE".into(), "POSITIVE".into()]).unwrap();
        assert_eq!(set.id("POSITIVE"), Some(1));
        let err = LabelSet::from_names(vec!["a".into(), "b".into(), "a".into()]).unwrap_err();
        assert_eq!(err.to_string(), "标签名 a 重复：第 0 类与第 2 类");
        let err = LabelSet::from_names(vec!["a".into(), " ".into()]).unwrap_err();
        assert_eq!(err.to_string(), "第 1 类的标签名为空");
        assert!(LabelSet::from_names(vec!["a".into()]).is_err());
    }

    #[test]
    fn encode_unknown_label_names_line_and_known_labels() {
        let f = write("dev.csv", b"text,label\na,neg\nb,pos\nc,neutral\n");
        let rows = read(&f);
        let set = LabelSet::from_names(vec!["neg".into(), "pos".into()]).unwrap();
        assert_eq!(
            set.encode(&f.path, &rows).unwrap_err().to_string(),
            msg(
                &f,
                " 第 4 行：标签 neutral 不在已知标签中（已知：neg, pos）"
            )
        );
        assert_eq!(set.encode(&f.path, &rows[..2]).unwrap(), [0, 1]);
    }

    #[test]
    fn long_lists_are_truncated() {
        let header: Vec<String> = (0..25).map(|i| format!("c{i}")).collect();
        let f = write("wide.csv", format!("{}\n", header.join(",")).as_bytes());
        let err = read_err(&f, &Columns::default());
        assert!(err.ends_with("c19 …（共 25 个））"), "{err}");
    }
}
