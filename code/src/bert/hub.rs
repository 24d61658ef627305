//! 3.8 节：从 Hugging Face Hub 下载模型。
//!
//! `--model` 既可以是本地目录，也可以是 Hub 上的仓库名 `ORG/NAME`（可带修订号
//! `ORG/NAME@REVISION`，如分支名、标签或 40 位提交哈希）。仓库用 Hugging Face 官方的
//! Rust 客户端 `hf-hub` 下载，放进与 Python `huggingface_hub` 完全相同的缓存布局：
//!
//! ```text
//! $HF_HOME/hub/models--ORG--NAME/
//!     refs/main                     # 分支名 → 提交哈希
//!     blobs/<etag>                  # 文件内容，按 etag 去重
//!     snapshots/<commit>/config.json -> ../../blobs/<etag>
//! ```
//!
//! 因此 Python 下载过的模型这里直接复用，这里下载的模型 Python 也认得。环境变量与 Python
//! 含义相同：`HF_ENDPOINT`、`HF_HOME`、`HF_HUB_CACHE`、`HF_TOKEN`、`HF_HUB_OFFLINE`
//! （也接受 `TRANSFORMERS_OFFLINE`）。hf-hub 0.5 的 `ApiBuilder::from_env()` 只读
//! `HF_HOME` 与 `HF_ENDPOINT`，其余几个由 [`HubEnv::from_vars`] 补上。

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, CacheRepo, Repo, RepoType};

/// `HF_ENDPOINT` 的默认值，与 Python 相同。
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// 必需：模型配置。
const CONFIG_FILE: &str = "config.json";
/// 必需：权重。本书只读 safetensors 格式。
const WEIGHTS_FILE: &str = "model.safetensors";
/// 旧式 PyTorch pickle 权重：只用来给出更准确的报错。
const PYTORCH_WEIGHTS_FILE: &str = "pytorch_model.bin";
/// 分词器文件：至少要有一个（WordPiece 词表或 tokenizers 的 JSON）。
const TOKENIZER_FILES: [&str; 2] = ["vocab.txt", "tokenizer.json"];
/// 可选文件：仓库里有就下载，没有也不报错。
const OPTIONAL_FILES: [&str; 2] = ["tokenizer_config.json", "special_tokens_map.json"];
/// 不写修订号时用的分支。
const DEFAULT_REVISION: &str = "main";

/// 解析 `--model` 时可能出现的错误；`Display` 给出中文说明和下一步该怎么做。
#[derive(Debug)]
pub enum HubError {
    /// 本地目录缺少必需文件。
    LocalFileMissing { dir: PathBuf, file: &'static str },
    /// 路径存在，但不是目录。
    NotADirectory(PathBuf),
    /// 既不是已有目录，也不是合法的 Hub 仓库名。
    InvalidModelArg(String),
    /// 没有 `HOME`，也没设 `HF_HOME`/`HF_HUB_CACHE`，无法确定缓存位置。
    NoHomeDir,
    /// `HF_ENDPOINT` 不是 http(s) 地址。
    InvalidEndpoint(String),
    /// 离线模式下，缓存里没有需要的文件。
    OfflineMissing {
        repo: String,
        file: String,
        cache_dir: PathBuf,
    },
    /// Hub 上找不到仓库或修订号（私有仓库在没有令牌时也是这样）。
    RepoNotFound {
        repo: String,
        endpoint: String,
        status: u16,
    },
    /// 受限（gated）或私有仓库，没有访问权限。
    AccessDenied {
        repo: String,
        endpoint: String,
        status: u16,
    },
    /// 仓库里缺少必需文件。
    RepoFileMissing {
        repo: String,
        endpoint: String,
        file: String,
    },
    /// 仓库只有 `pytorch_model.bin`，没有 safetensors 权重。
    OnlyPytorchWeights { repo: String },
    /// 连不上服务器，或服务器返回了其他错误。
    Network {
        repo: String,
        endpoint: String,
        detail: String,
    },
    /// 下载或写入缓存时出错。
    Download {
        repo: String,
        file: String,
        detail: String,
    },
}

impl fmt::Display for HubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use HubError::*;
        match self {
            LocalFileMissing { dir, file } => {
                write!(f, "模型目录 {} 里缺少 {file}", dir.display())
            }
            NotADirectory(path) => write!(f, "{} 存在，但不是目录；--model 需要模型目录或 Hub 仓库名", path.display()),
            InvalidModelArg(arg) => write!(
                f,
                "本地目录 {arg} 不存在，它也不是合法的 Hub 仓库名（应为 ORG/NAME 或 ORG/NAME@REVISION，只含字母、数字、`.`、`_`、`-`）"
            ),
            NoHomeDir => write!(f, "找不到主目录（HOME 未设置），无法确定 Hugging Face 缓存位置；请设置 HF_HOME 或 HF_HUB_CACHE"),
            InvalidEndpoint(endpoint) => {
                write!(f, "HF_ENDPOINT={endpoint} 不是 http:// 或 https:// 开头的地址")
            }
            OfflineMissing { repo, file, cache_dir } => write!(
                f,
                "离线模式已开启（HF_HUB_OFFLINE=1），但缓存 {} 里没有 {repo} 的 {file}；请联网下载一次，或关闭离线模式",
                cache_dir.display()
            ),
            RepoNotFound { repo, endpoint, status } => write!(
                f,
                "在 {endpoint} 上找不到模型仓库 {repo}（HTTP {status}）：仓库或修订号不存在，或者是私有仓库（需设置 HF_TOKEN）；它也不是本地目录"
            ),
            AccessDenied { repo, endpoint, status } => write!(
                f,
                "没有权限从 {endpoint} 下载 {repo}（HTTP {status}）：这是受限（gated）或私有仓库。请先在网页上同意使用条款，再把访问令牌设到 HF_TOKEN"
            ),
            RepoFileMissing { repo, endpoint, file } => {
                write!(f, "{endpoint} 上的仓库 {repo} 里没有 {file}")
            }
            OnlyPytorchWeights { repo } => write!(
                f,
                "仓库 {repo} 只有 PyTorch 权重 {PYTORCH_WEIGHTS_FILE}，本书只支持 safetensors 权重（{WEIGHTS_FILE}）。\
                 请先转换：在 Python 里 `AutoModel.from_pretrained(\"{repo}\").save_pretrained(\"目录\", safe_serialization=True)`，\
                 再把 --model 指向该目录；或用 Hub 上自动转换的分支，如 {repo}@refs/pr/1"
            ),
            Network { repo, endpoint, detail } => write!(
                f,
                "本地没有目录 {repo}，按 Hub 仓库名下载，但无法从 {endpoint} 获取 {repo}：{detail}。请检查路径，或检查网络与代理；可用 HF_ENDPOINT 指向镜像站；模型已在缓存中时可设 HF_HUB_OFFLINE=1"
            ),
            Download { repo, file, detail } => write!(f, "下载 {repo} 的 {file} 失败：{detail}"),
        }
    }
}

impl std::error::Error for HubError {}

/// Hub 相关的环境设置，与 Python `huggingface_hub` 读同样的环境变量。
///
/// 测试里直接构造它，不必改进程的环境变量。
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubEnv {
    /// Hub 地址，末尾不带 `/`（`HF_ENDPOINT`）。
    pub endpoint: String,
    /// 缓存根目录，即 `models--ORG--NAME` 所在的目录（`HF_HUB_CACHE` 或 `$HF_HOME/hub`）。
    pub cache_dir: PathBuf,
    /// 访问令牌（`HF_TOKEN`，或 `huggingface-cli login` 写下的令牌文件）。
    pub token: Option<String>,
    /// 离线模式：只查缓存，绝不联网（`HF_HUB_OFFLINE` / `TRANSFORMERS_OFFLINE`）。
    pub offline: bool,
    /// 下载时是否显示进度条（`HF_HUB_DISABLE_PROGRESS_BARS` 为真时关闭）。
    pub progress: bool,
}

impl HubEnv {
    /// 从进程环境变量读取设置。
    pub fn from_env() -> Result<Self, HubError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// 用给定的查找函数读取设置，规则照搬 Python `huggingface_hub/constants.py`。
    ///
    /// hf-hub 0.5 的 `ApiBuilder::from_env()` 只读 `HF_HOME` 和 `HF_ENDPOINT`；下面这些由本函数补上：
    /// `XDG_CACHE_HOME`、`HF_HUB_CACHE`（及旧名 `HUGGINGFACE_HUB_CACHE`）、`HF_TOKEN`、`HF_TOKEN_PATH`、
    /// 离线开关、`~` 展开、去掉 `HF_ENDPOINT` 末尾的 `/`（否则 hf-hub 会拼出 `//`）。
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, HubError> {
        let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let home = || {
            get("HOME")
                .or_else(|| get("USERPROFILE"))
                .map(PathBuf::from)
                .ok_or(HubError::NoHomeDir)
        };
        let expand = |p: String| match p.strip_prefix('~') {
            Some(rest) if rest.is_empty() || rest.starts_with(['/', '\\']) => {
                Ok(home()?.join(rest.trim_start_matches(['/', '\\'])))
            }
            _ => Ok(PathBuf::from(p)),
        };
        let hf_home = match (get("HF_HOME"), get("XDG_CACHE_HOME")) {
            (Some(p), _) => expand(p)?,
            (None, Some(xdg)) => expand(xdg)?.join("huggingface"),
            (None, None) => home()?.join(".cache").join("huggingface"),
        };
        let cache_dir = match get("HF_HUB_CACHE").or_else(|| get("HUGGINGFACE_HUB_CACHE")) {
            Some(p) => expand(p)?,
            None => hf_home.join("hub"),
        };
        // 令牌：先看 HF_TOKEN，再看令牌文件（HF_TOKEN_PATH，默认 $HF_HOME/token）。
        // hf-hub 的 Cache::token() 读的是“缓存目录的上一级/token”，设了 HF_HUB_CACHE 时会找错地方。
        let token = match get("HF_TOKEN") {
            Some(t) => Some(t.trim().to_string()),
            None => {
                let path = match get("HF_TOKEN_PATH") {
                    Some(p) => expand(p)?,
                    None => hf_home.join("token"),
                };
                std::fs::read_to_string(path)
                    .ok()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
            }
        };
        let is_true = |name: &str| {
            get(name).is_some_and(|v| {
                matches!(
                    v.trim().to_ascii_uppercase().as_str(),
                    "1" | "ON" | "YES" | "TRUE"
                )
            })
        };
        let endpoint = get("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        Ok(Self {
            endpoint: endpoint.trim().trim_end_matches('/').to_string(),
            cache_dir,
            token,
            offline: is_true("HF_HUB_OFFLINE") || is_true("TRANSFORMERS_OFFLINE"),
            progress: !is_true("HF_HUB_DISABLE_PROGRESS_BARS"),
        })
    }
}

/// Hub 上的一个模型仓库及其修订号，如 `google-bert/bert-base-uncased@main`。
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoSpec {
    /// 仓库名 `ORG/NAME` 或 `NAME`。
    pub id: String,
    /// 分支、标签或提交哈希；不写时为 `main`。
    pub revision: String,
}

impl RepoSpec {
    /// 按 Hub 的命名规则解析 `ORG/NAME[@REVISION]`；不合法时返回 `None`。
    pub fn parse(arg: &str) -> Option<Self> {
        let (id, revision) = match arg.split_once('@') {
            Some((id, rev)) => (id, rev),
            None => (arg, DEFAULT_REVISION),
        };
        let parts: Vec<&str> = id.split('/').collect();
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 96
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                && !s.starts_with(['.', '-'])
                && !s.ends_with(['.', '-'])
                && !s.contains("--")
                && !s.contains("..")
        };
        // 修订号可以含 `/`（如 `refs/pr/1`），但不能有 `..`，以免跳出缓存目录。
        let revision_ok = !revision.is_empty()
            && revision
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
            && !revision.starts_with('/')
            && !revision.ends_with('/')
            && !revision.contains("..");
        (parts.len() <= 2 && parts.iter().all(|p| name_ok(p)) && revision_ok).then(|| Self {
            id: id.to_string(),
            revision: revision.to_string(),
        })
    }

    fn hub_repo(&self) -> Repo {
        Repo::with_revision(self.id.clone(), RepoType::Model, self.revision.clone())
    }
}

impl fmt::Display for RepoSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.revision == DEFAULT_REVISION {
            write!(f, "{}", self.id)
        } else {
            write!(f, "{}@{}", self.id, self.revision)
        }
    }
}

/// 把 `--model` 解析成本地模型目录：本地目录原样返回，否则按仓库名从 Hub 下载（环境变量见 [`HubEnv`]）。
pub fn resolve_model(arg: &str) -> Result<PathBuf, HubError> {
    // 本地目录不需要读环境变量（没有 HOME 时也能用）。
    if Path::new(arg).exists() {
        return local_model_dir(Path::new(arg));
    }
    resolve_model_with(arg, &HubEnv::from_env()?)
}

// ANCHOR: resolve
/// 与 [`resolve_model`] 相同，但环境设置由调用者给出。
///
/// 返回的目录里一定有 `config.json`；从 Hub 来的目录还一定有 `model.safetensors`，
/// 以及 `vocab.txt`、`tokenizer.json` 中的至少一个。
pub fn resolve_model_with(arg: &str, env: &HubEnv) -> Result<PathBuf, HubError> {
    let path = Path::new(arg);
    if path.exists() {
        return local_model_dir(path);
    }
    let spec = RepoSpec::parse(arg).ok_or_else(|| HubError::InvalidModelArg(arg.to_string()))?;
    if env.offline {
        find_in_cache(&spec, env)
    } else {
        download(&spec, env)
    }
}
// ANCHOR_END: resolve

/// 本地目录：只检查 `config.json` 在不在，其余文件由加载代码报错。
fn local_model_dir(path: &Path) -> Result<PathBuf, HubError> {
    if !path.is_dir() {
        return Err(HubError::NotADirectory(path.to_path_buf()));
    }
    if !path.join(CONFIG_FILE).is_file() {
        return Err(HubError::LocalFileMissing {
            dir: path.to_path_buf(),
            file: CONFIG_FILE,
        });
    }
    Ok(path.to_path_buf())
}

/// 缺了哪类文件。
#[derive(Debug, PartialEq, Eq)]
enum Missing {
    File(&'static str),
    Tokenizer,
    OnlyPytorch,
}

impl Missing {
    fn into_error(self, spec: &RepoSpec, env: &HubEnv) -> HubError {
        let repo = spec.to_string();
        let file = match self {
            Missing::OnlyPytorch => return HubError::OnlyPytorchWeights { repo },
            Missing::File(f) => f.to_string(),
            Missing::Tokenizer => format!("{} 或 {}", TOKENIZER_FILES[0], TOKENIZER_FILES[1]),
        };
        if env.offline {
            HubError::OfflineMissing {
                repo,
                file,
                cache_dir: env.cache_dir.clone(),
            }
        } else {
            HubError::RepoFileMissing {
                repo,
                endpoint: env.endpoint.clone(),
                file,
            }
        }
    }
}

/// 按“有哪些文件”决定要取哪些：必需文件缺了就报错，可选文件有才取。
fn plan_files(has: impl Fn(&str) -> bool) -> Result<Vec<&'static str>, Missing> {
    if !has(CONFIG_FILE) {
        return Err(Missing::File(CONFIG_FILE));
    }
    if !has(WEIGHTS_FILE) {
        return Err(match has(PYTORCH_WEIGHTS_FILE) {
            true => Missing::OnlyPytorch,
            false => Missing::File(WEIGHTS_FILE),
        });
    }
    let mut files = vec![CONFIG_FILE, WEIGHTS_FILE];
    files.extend(TOKENIZER_FILES.into_iter().filter(|f| has(f)));
    if files.len() == 2 {
        return Err(Missing::Tokenizer);
    }
    files.extend(OPTIONAL_FILES.into_iter().filter(|f| has(f)));
    Ok(files)
}

/// 40 位十六进制的提交哈希。
fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// 离线模式：只读缓存。hf-hub 的 `CacheRepo::get` 经 `refs/<revision>` 找快照；
/// 修订号本身是提交哈希时 Python 不写 refs，这里补上：直接进 `snapshots/<哈希>/`。
fn find_in_cache(spec: &RepoSpec, env: &HubEnv) -> Result<PathBuf, HubError> {
    let cache_repo = Cache::new(env.cache_dir.clone()).repo(spec.hub_repo());
    let snapshot = if is_commit_hash(&spec.revision) {
        Some(cache_repo.pointer_path(&spec.revision))
    } else {
        cache_repo
            .get(CONFIG_FILE)
            .and_then(|p| p.parent().map(Path::to_path_buf))
    };
    let snapshot = snapshot.ok_or_else(|| Missing::File(CONFIG_FILE).into_error(spec, env))?;
    plan_files(|f| snapshot.join(f).exists()).map_err(|m| m.into_error(spec, env))?;
    Ok(snapshot)
}

/// 联网：先问仓库信息（提交哈希与文件列表），再逐个下载快照里还没有的文件。
///
/// 先问文件列表而不是挨个试探 404，是因为 ureq 把 HTTP 错误只报成状态码，
/// 分不清“仓库不存在”和“文件不存在”；有了提交哈希，Python 已下载的文件也不必再下一遍
/// （hf-hub 的 `download` 不查缓存，`get` 又只认本地 refs、不知道远端有没有更新）。
fn download(spec: &RepoSpec, env: &HubEnv) -> Result<PathBuf, HubError> {
    if !(env.endpoint.starts_with("http://") || env.endpoint.starts_with("https://")) {
        return Err(HubError::InvalidEndpoint(env.endpoint.clone()));
    }
    let cache = Cache::new(env.cache_dir.clone());
    let api = ApiBuilder::from_cache(cache.clone())
        .with_endpoint(env.endpoint.clone())
        .with_token(env.token.clone())
        .with_progress(env.progress)
        .build()
        .map_err(|e| api_error(e, spec, env, None))?;
    let api_repo = api.repo(spec.hub_repo());
    let info = api_repo.info().map_err(|e| api_error(e, spec, env, None))?;
    if !is_commit_hash(&info.sha) {
        let detail = format!("服务器返回的提交哈希 {:?} 无效", info.sha);
        return Err(HubError::Network {
            repo: spec.to_string(),
            endpoint: env.endpoint.clone(),
            detail,
        });
    }
    let listed: HashSet<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    let files = plan_files(|f| listed.contains(f)).map_err(|m| m.into_error(spec, env))?;

    let cache_repo: CacheRepo = cache.repo(spec.hub_repo());
    let snapshot = cache_repo.pointer_path(&info.sha);
    for file in files {
        let target = snapshot.join(file);
        if target.exists() {
            continue; // Python 或上一次已经下载过
        }
        // 悬空的符号链接（blob 被删了）会让 hf-hub 建链接失败，先删掉它
        let _ = std::fs::remove_file(&target);
        let got = api_repo
            .download(file)
            .map_err(|e| api_error(e, spec, env, Some(file)))?;
        // 所有文件必须在同一个快照里；不同说明下载期间仓库有了新提交
        if got.parent() != Some(snapshot.as_path()) {
            return Err(HubError::Download {
                repo: spec.to_string(),
                file: file.to_string(),
                detail: format!(
                    "它落进了另一个快照 {}（下载期间仓库有新提交），请重试或用 @提交哈希 固定版本",
                    got.display()
                ),
            });
        }
    }
    // 文件全在缓存里时 hf-hub 不会更新 refs/<revision>；写上它，之后离线模式才找得到这个快照
    if !is_commit_hash(&spec.revision) {
        cache_repo
            .create_ref(&info.sha)
            .map_err(|e| HubError::Download {
                repo: spec.to_string(),
                file: format!("refs/{}", spec.revision),
                detail: e.to_string(),
            })?;
    }
    Ok(snapshot)
}

/// 把 hf-hub 的错误翻译成带仓库名和地址的中文错误；`file` 为 `None` 表示在查仓库信息。
fn api_error(err: ApiError, spec: &RepoSpec, env: &HubEnv, file: Option<&str>) -> HubError {
    let (repo, endpoint) = (spec.to_string(), env.endpoint.clone());
    let what = file.map_or("仓库信息".to_string(), |f| format!(" {f} "));
    match err {
        ApiError::RequestError(e) => match *e {
            ureq::Error::StatusCode(status @ (401 | 404)) if file.is_none() => {
                HubError::RepoNotFound {
                    repo,
                    endpoint,
                    status,
                }
            }
            ureq::Error::StatusCode(status @ (401 | 403)) => HubError::AccessDenied {
                repo,
                endpoint,
                status,
            },
            ureq::Error::StatusCode(status) => HubError::Network {
                repo,
                endpoint,
                detail: format!("请求{what}时服务器返回 HTTP {status}"),
            },
            other => HubError::Network {
                repo,
                endpoint,
                detail: format!("请求{what}失败（{other}）"),
            },
        },
        other => HubError::Download {
            repo,
            file: what.trim().to_string(),
            detail: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};
    use tempfile::TempDir;

    /// 假仓库的提交哈希。
    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
    /// 一台假 Hub 最多处理的连接数与存活时间：测试卡住时也会自行结束。
    const MAX_CONNECTIONS: usize = 64;
    const SERVER_LIFETIME: Duration = Duration::from_secs(30);
    const IO_TIMEOUT: Duration = Duration::from_secs(5);

    /// 测试固件目录：主 crate 里用 CARGO_MANIFEST_DIR，单独编译本文件时从源文件路径往上找。
    fn fixture_dir() -> PathBuf {
        let from_manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert");
        let from_source = Path::new(file!())
            .ancestors()
            .nth(3)
            .map(|p| p.join("tests/fixtures/tiny-bert"));
        [Some(from_manifest), from_source]
            .into_iter()
            .flatten()
            .find(|p| p.join(CONFIG_FILE).is_file())
            .expect("找不到 tests/fixtures/tiny-bert")
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(fixture_dir().join(name)).unwrap()
    }

    /// 测试用的环境：临时缓存、本地假 Hub、无令牌、不画进度条。
    fn test_env(endpoint: &str, cache: &TempDir, offline: bool) -> HubEnv {
        HubEnv {
            endpoint: endpoint.to_string(),
            cache_dir: cache.path().to_path_buf(),
            token: None,
            offline,
            progress: false,
        }
    }

    /// 假仓库里的一个文件；`lfs` 为真时像 Hub 对大文件那样 302 跳转到“CDN”。
    struct FakeFile {
        name: &'static str,
        bytes: Vec<u8>,
        lfs: bool,
    }

    /// 假仓库；`token` 不为空时是受限仓库：下载文件要带 `Authorization: Bearer <token>`，否则 403。
    struct FakeRepo {
        id: &'static str,
        files: Vec<FakeFile>,
        token: Option<&'static str>,
    }

    /// 假 Hub 关心的请求内容。
    struct Request {
        path: String,
        range: Option<(usize, Option<usize>)>,
        auth: Option<String>,
    }

    fn tiny_bert(id: &'static str, weights: &'static str) -> FakeRepo {
        let files = vec![
            FakeFile {
                name: CONFIG_FILE,
                bytes: fixture(CONFIG_FILE),
                lfs: false,
            },
            FakeFile {
                name: weights,
                bytes: fixture(WEIGHTS_FILE),
                lfs: true,
            },
            FakeFile {
                name: "vocab.txt",
                bytes: fixture("vocab.txt"),
                lfs: false,
            },
        ];
        FakeRepo {
            id,
            files,
            token: None,
        }
    }

    /// 手写的 HTTP/1.1 假 Hub（只监听 127.0.0.1；若环境里设了 HTTP(S)_PROXY/ALL_PROXY，
    /// ureq 会走代理，这时要让 NO_PROXY 包含 127.0.0.1），按 Hub 的 URL 布局提供：
    /// `/api/models/{repo}/revision/{rev}`、`/{repo}/resolve/{rev}/{file}`，以及大文件跳转去的 `/cdn/{repo}/{file}`。
    struct FakeHub {
        addr: SocketAddr,
        stop: Arc<AtomicBool>,
        resolve_requests: Arc<AtomicUsize>,
        thread: Option<JoinHandle<()>>,
    }

    impl FakeHub {
        fn start(repos: Vec<FakeRepo>) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let addr = listener.local_addr().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let resolve_requests = Arc::new(AtomicUsize::new(0));
            let (stop2, count2) = (stop.clone(), resolve_requests.clone());
            let thread = std::thread::spawn(move || {
                let deadline = Instant::now() + SERVER_LIFETIME;
                let mut served = 0;
                while !stop2.load(Ordering::SeqCst)
                    && served < MAX_CONNECTIONS
                    && Instant::now() < deadline
                {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            served += 1;
                            let _ = serve(stream, &repos, addr, &count2);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5))
                        }
                        Err(_) => break,
                    }
                }
            });
            Self {
                addr,
                stop,
                resolve_requests,
                thread: Some(thread),
            }
        }

        fn endpoint(&self) -> String {
            format!("http://{}", self.addr)
        }
    }

    impl Drop for FakeHub {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    struct Response {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
    }

    fn not_found(code: &str) -> Response {
        Response {
            status: 404,
            headers: vec![("X-Error-Code", code.to_string())],
            body: b"{}".to_vec(),
        }
    }

    /// 内容的假 etag（真 Hub 用 git sha1 或 sha256，这里只要稳定即可）。
    fn fake_etag(bytes: &[u8]) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut h);
        format!("{:016x}", h.finish())
    }

    /// 按 `Range: bytes=a-b` 返回 206 和 `Content-Range`（hf-hub 先取 0-0 拿总大小，再从断点取到结尾）。
    fn ranged(
        bytes: &[u8],
        range: Option<(usize, Option<usize>)>,
        mut headers: Vec<(&'static str, String)>,
    ) -> Response {
        let Some((start, end)) = range else {
            return Response {
                status: 200,
                headers,
                body: bytes.to_vec(),
            };
        };
        let end = end.unwrap_or(usize::MAX).min(bytes.len().saturating_sub(1));
        if start > end {
            return Response {
                status: 416,
                headers,
                body: Vec::new(),
            };
        }
        headers.push((
            "Content-Range",
            format!("bytes {start}-{end}/{}", bytes.len()),
        ));
        Response {
            status: 206,
            headers,
            body: bytes[start..=end].to_vec(),
        }
    }

    fn route(req: &Request, repos: &[FakeRepo], addr: SocketAddr, count: &AtomicUsize) -> Response {
        let (path, range) = (req.path.as_str(), req.range);
        let find = |id: &str| repos.iter().find(|r| r.id == id);
        if let Some(rest) = path.strip_prefix("/api/models/") {
            let Some((id, rev)) = rest.split_once("/revision/") else {
                return not_found("EntryNotFound");
            };
            let Some(repo) = find(id).filter(|_| rev == "main" || rev == COMMIT) else {
                return not_found("RepositoryNotFound");
            };
            let siblings: Vec<String> = repo
                .files
                .iter()
                .map(|f| format!("{{\"rfilename\":\"{}\"}}", f.name))
                .collect();
            let body = format!(
                "{{\"id\":\"{id}\",\"sha\":\"{COMMIT}\",\"siblings\":[{}]}}",
                siblings.join(",")
            );
            return Response {
                status: 200,
                headers: vec![("Content-Type", "application/json".into())],
                body: body.into_bytes(),
            };
        }
        if let Some(rest) = path.strip_prefix("/cdn/") {
            let Some((id, name)) = rest.rsplit_once('/') else {
                return not_found("EntryNotFound");
            };
            return match find(id).and_then(|r| r.files.iter().find(|f| f.name == name)) {
                Some(f) => ranged(
                    &f.bytes,
                    range,
                    vec![("ETag", format!("\"{}\"", fake_etag(&f.bytes)))],
                ),
                None => not_found("EntryNotFound"),
            };
        }
        // /{org}/{name}/resolve/{rev}/{file}
        let Some((id, rest)) = path.trim_start_matches('/').split_once("/resolve/") else {
            return not_found("EntryNotFound");
        };
        count.fetch_add(1, Ordering::SeqCst);
        let Some((rev, name)) = rest.split_once('/') else {
            return not_found("EntryNotFound");
        };
        let Some(repo) = find(id).filter(|_| rev == "main" || rev == COMMIT) else {
            return not_found("RepositoryNotFound");
        };
        let bearer = repo.token.map(|t| format!("Bearer {t}"));
        if bearer.is_some() && req.auth != bearer {
            return Response {
                status: 403,
                headers: vec![("X-Error-Code", "GatedRepo".into())],
                body: Vec::new(),
            };
        }
        let Some(f) = repo.files.iter().find(|f| f.name == name) else {
            return not_found("EntryNotFound");
        };
        let etag = fake_etag(&f.bytes);
        let mut headers = vec![("X-Repo-Commit", COMMIT.to_string())];
        if f.lfs {
            // 与 Hub 相同：LFS 文件 302 到 CDN，x-linked-etag 是内容的 etag，etag 是指针文件的
            headers.push(("X-Linked-Etag", format!("\"{etag}\"")));
            headers.push(("ETag", "\"pointer-etag\"".into()));
            headers.push(("Location", format!("http://{addr}/cdn/{id}/{name}")));
            return Response {
                status: 302,
                headers,
                body: Vec::new(),
            };
        }
        headers.push(("ETag", format!("\"{etag}\"")));
        ranged(&f.bytes, range, headers)
    }

    /// 处理一个连接上的一个请求，回答后关闭连接。
    fn serve(
        mut stream: TcpStream,
        repos: &[FakeRepo],
        addr: SocketAddr,
        count: &AtomicUsize,
    ) -> std::io::Result<()> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut head = Vec::new();
        let mut chunk = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&chunk[..n]);
        }
        let head = String::from_utf8_lossy(&head);
        let path = head
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("/")
            .replace("%2F", "/");
        let header = |name: &str| {
            head.lines()
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_string())
        };
        let range = header("range").and_then(|v| {
            let (a, b) = v.strip_prefix("bytes=")?.split_once('-')?;
            Some((a.parse().ok()?, b.parse().ok()))
        });
        let req = Request {
            path,
            range,
            auth: header("authorization"),
        };
        let resp = route(&req, repos, addr, count);
        let mut out = format!("HTTP/1.1 {} X\r\n", resp.status);
        for (k, v) in &resp.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            resp.body.len()
        ));
        stream.write_all(out.as_bytes())?;
        stream.write_all(&resp.body)?;
        stream.flush()
    }

    #[test]
    fn repo_spec_follows_hub_naming_rules() {
        let spec = RepoSpec::parse("google-bert/bert-base-uncased").unwrap();
        assert_eq!(
            (spec.id.as_str(), spec.revision.as_str()),
            ("google-bert/bert-base-uncased", "main")
        );
        let spec = RepoSpec::parse("bert-base-uncased@refs/pr/1").unwrap();
        assert_eq!(
            (spec.id.as_str(), spec.revision.as_str()),
            ("bert-base-uncased", "refs/pr/1")
        );
        assert_eq!(spec.to_string(), "bert-base-uncased@refs/pr/1");
        for bad in [
            "",
            "a/b/c",
            "./models/bert",
            "a b",
            "org/-x",
            "org/x--y",
            "org/x@",
            "org/x@../y",
            "/abs",
        ] {
            assert_eq!(RepoSpec::parse(bad), None, "{bad:?} 不应被当成仓库名");
        }
    }

    #[test]
    fn env_follows_python_rules() {
        let vars = |pairs: &[(&str, &str)]| {
            let map: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            HubEnv::from_vars(move |k| map.get(k).cloned()).unwrap()
        };
        let env = vars(&[("HOME", "/home/u")]);
        assert_eq!(env.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(env.cache_dir, Path::new("/home/u/.cache/huggingface/hub"));
        assert!(!env.offline && env.progress && env.token.is_none());

        let env = vars(&[
            ("HOME", "/home/u"),
            ("HF_HOME", "~/hf"),
            ("HF_ENDPOINT", "https://hf-mirror.com/"),
            ("HF_TOKEN", " hf_x \n"),
            ("HF_HUB_OFFLINE", "1"),
        ]);
        assert_eq!(env.cache_dir, Path::new("/home/u/hf/hub"));
        assert_eq!(env.endpoint, "https://hf-mirror.com");
        assert_eq!(env.token.as_deref(), Some("hf_x"));
        assert!(env.offline);

        let env = vars(&[
            ("XDG_CACHE_HOME", "/xdg"),
            ("TRANSFORMERS_OFFLINE", "true"),
            ("HF_HUB_DISABLE_PROGRESS_BARS", "yes"),
        ]);
        assert_eq!(env.cache_dir, Path::new("/xdg/huggingface/hub"));
        assert!(env.offline && !env.progress);

        let env = vars(&[
            ("HF_HOME", "/hf"),
            ("HF_HUB_CACHE", "/models"),
            ("HF_HUB_OFFLINE", "0"),
        ]);
        assert_eq!(env.cache_dir, Path::new("/models"));
        assert!(!env.offline);

        let err = HubEnv::from_vars(|_| None).unwrap_err();
        assert!(err.to_string().contains("HF_HOME"), "{err}");
    }

    #[test]
    fn plan_requires_config_safetensors_and_a_tokenizer() {
        let has = |names: &'static [&'static str]| move |f: &str| names.contains(&f);
        let files = plan_files(has(&[
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "special_tokens_map.json",
            "pytorch_model.bin",
        ]));
        assert_eq!(
            files.unwrap(),
            [
                "config.json",
                "model.safetensors",
                "tokenizer.json",
                "special_tokens_map.json"
            ]
        );
        assert_eq!(
            plan_files(has(&["config.json", "model.safetensors"])),
            Err(Missing::Tokenizer)
        );
        assert_eq!(
            plan_files(has(&["config.json", "pytorch_model.bin", "vocab.txt"])),
            Err(Missing::OnlyPytorch)
        );
        assert_eq!(
            plan_files(has(&["model.safetensors", "vocab.txt"])),
            Err(Missing::File(CONFIG_FILE))
        );
    }

    #[test]
    fn download_uses_python_layout_and_offline_finds_it_again() {
        let cache = tempfile::tempdir().unwrap();
        let hub = FakeHub::start(vec![tiny_bert("llm-book/tiny-bert", WEIGHTS_FILE)]);
        let env = test_env(&hub.endpoint(), &cache, false);

        // (a) 下载：快照目录在 models--llm-book--tiny-bert/snapshots/<commit>/，内容逐字节相同
        let dir = resolve_model_with("llm-book/tiny-bert", &env).unwrap();
        let repo_dir = cache.path().join("models--llm-book--tiny-bert");
        assert_eq!(dir, repo_dir.join("snapshots").join(COMMIT));
        for name in [CONFIG_FILE, WEIGHTS_FILE, "vocab.txt"] {
            assert_eq!(
                std::fs::read(dir.join(name)).unwrap(),
                fixture(name),
                "{name} 内容不同"
            );
        }
        assert!(!dir.join("tokenizer_config.json").exists());
        assert_eq!(
            std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
            COMMIT
        );
        #[cfg(unix)]
        {
            // 与 Python 相同：快照里是指向 blobs/<etag> 的相对符号链接，LFS 文件用 x-linked-etag
            let link = std::fs::read_link(dir.join(WEIGHTS_FILE)).unwrap();
            assert_eq!(
                link,
                Path::new("../../blobs").join(fake_etag(&fixture(WEIGHTS_FILE)))
            );
        }

        // 再解析一次：文件都在快照里（像 Python 按提交哈希下载过、没写 refs/main 那样），
        // 只问仓库信息、不再下载，并补写 refs/main
        std::fs::remove_file(repo_dir.join("refs/main")).unwrap();
        let before = hub.resolve_requests.load(Ordering::SeqCst);
        assert_eq!(resolve_model_with("llm-book/tiny-bert", &env).unwrap(), dir);
        assert_eq!(hub.resolve_requests.load(Ordering::SeqCst), before);
        assert_eq!(
            std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
            COMMIT
        );

        // (b) 关掉服务器、开离线模式：按分支名和按提交哈希都找到同一个目录
        let offline = test_env(&hub.endpoint(), &cache, true);
        drop(hub);
        assert_eq!(
            resolve_model_with("llm-book/tiny-bert", &offline).unwrap(),
            dir
        );
        assert_eq!(
            resolve_model_with(&format!("llm-book/tiny-bert@{COMMIT}"), &offline).unwrap(),
            dir
        );
    }

    #[test]
    fn offline_reads_a_cache_written_like_python() {
        // Python huggingface_hub 写下的布局（这里用普通文件代替符号链接，Windows 上 Python 也这样做）
        let cache = tempfile::tempdir().unwrap();
        let repo_dir = cache.path().join("models--llm-book--tiny-bert");
        let snapshot = repo_dir.join("snapshots").join(COMMIT);
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
        std::fs::write(repo_dir.join("refs/main"), COMMIT).unwrap();
        for name in [CONFIG_FILE, WEIGHTS_FILE, "vocab.txt"] {
            std::fs::write(snapshot.join(name), fixture(name)).unwrap();
        }
        let env = test_env("http://127.0.0.1:9", &cache, true);
        assert_eq!(
            resolve_model_with("llm-book/tiny-bert", &env).unwrap(),
            snapshot
        );
    }

    #[test]
    fn offline_with_empty_cache_names_repo_and_file() {
        // (c)
        let cache = tempfile::tempdir().unwrap();
        let env = test_env("http://127.0.0.1:9", &cache, true);
        let err = resolve_model_with("llm-book/tiny-bert", &env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("离线模式")
                && err.contains("llm-book/tiny-bert")
                && err.contains("config.json"),
            "{err}"
        );
    }

    #[test]
    fn network_errors_name_repo_and_endpoint() {
        let cache = tempfile::tempdir().unwrap();
        let mut gated = tiny_bert("llm-book/gated", WEIGHTS_FILE);
        gated.token = Some("hf_test");
        let hub = FakeHub::start(vec![
            tiny_bert("llm-book/pt-only", PYTORCH_WEIGHTS_FILE),
            gated,
        ]);
        let env = test_env(&hub.endpoint(), &cache, false);

        // (d) 仓库不存在
        let err = resolve_model_with("llm-book/missing", &env).unwrap_err();
        assert!(
            matches!(err, HubError::RepoNotFound { status: 404, .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("llm-book/missing") && msg.contains(&hub.endpoint()),
            "{msg}"
        );

        // (e) 只有 pytorch_model.bin
        let msg = resolve_model_with("llm-book/pt-only", &env)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("safetensors") && msg.contains("llm-book/pt-only") && msg.contains("转换"),
            "{msg}"
        );

        // 受限仓库：文件下载返回 403
        let err = resolve_model_with("llm-book/gated", &env).unwrap_err();
        assert!(
            matches!(err, HubError::AccessDenied { status: 403, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("HF_TOKEN"));
        // 带上令牌（HF_TOKEN）就能下载：令牌经 hf-hub 放进了 Authorization 头
        let with_token = HubEnv {
            token: Some("hf_test".into()),
            ..env.clone()
        };
        let dir = resolve_model_with("llm-book/gated", &with_token).unwrap();
        assert_eq!(
            std::fs::read(dir.join(WEIGHTS_FILE)).unwrap(),
            fixture(WEIGHTS_FILE)
        );

        // 连不上：换一个已经关掉的端口
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let env = test_env(&format!("http://{closed}"), &cache, false);
        let err = resolve_model_with("llm-book/tiny-bert", &env).unwrap_err();
        assert!(matches!(err, HubError::Network { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&format!("http://{closed}")),
            "{err}"
        );
    }

    #[test]
    fn local_directories_and_bad_arguments() {
        // (f) 本地目录原样返回，不联网
        let env = test_env("http://127.0.0.1:9", &tempfile::tempdir().unwrap(), false);
        let local = fixture_dir();
        assert_eq!(
            resolve_model_with(local.to_str().unwrap(), &env).unwrap(),
            local
        );

        let empty = tempfile::tempdir().unwrap();
        let err = resolve_model_with(empty.path().to_str().unwrap(), &env).unwrap_err();
        assert!(err.to_string().contains("config.json"), "{err}");

        let err = resolve_model_with("./no/such/model/dir", &env).unwrap_err();
        assert!(matches!(err, HubError::InvalidModelArg(_)), "{err:?}");
        assert!(
            err.to_string().contains("不存在") && err.to_string().contains("仓库名"),
            "{err}"
        );
    }
}
