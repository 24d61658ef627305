//! 命令行的中文外观：帮助模板、`-h` 的说明和 clap 错误信息的中文版。
//!
//! clap 自带的提示（“Usage”“invalid value”）是英文的，且不支持本地化；这里把命令树改写成
//! 中文模板，并把解析错误翻译成一句指明参数与取值的中文。

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Arg, ArgAction, Command, CommandFactory, FromArgMatches};

const TEMPLATE: &str = "{about-with-newline}\n用法：{usage}\n\n{all-args}{after-help}";

/// 把 `cmd` 及其所有子命令换成中文的帮助模板与 `-h/--help` 说明。
pub fn localize(cmd: Command) -> Command {
    let cmd = cmd
        .help_template(TEMPLATE)
        .subcommand_help_heading("实验")
        .subcommand_value_name("实验")
        .next_help_heading("选项")
        .disable_help_flag(true)
        .arg(
            Arg::new("help")
                .short('h')
                .long("help")
                .action(ArgAction::Help)
                .help("显示帮助"),
        )
        .mut_args(localize_arg);
    cmd.mut_subcommands(localize)
}

/// 参数放进“选项”一节；可选的取值与默认值用中文写在说明后面（clap 自己写的是“Possible values”“default”）。
fn localize_arg(arg: Arg) -> Arg {
    let arg = match (arg.get_help_heading(), arg.is_positional()) {
        (None, false) => arg.help_heading("选项"),
        (None, true) => arg.help_heading("参数"),
        _ => arg,
    };
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    let arg = if defaults.is_empty() || arg.is_hide_default_value_set() {
        arg
    } else {
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        arg.hide_default_value(true)
            .help(format!("{help}（默认：{}）", defaults.join("、")))
    };
    localize_possible_values(arg)
}

/// 取值有说明的参数（如 `--init-lora-weights`）：`--help` 里逐个列出“取值：说明”，代替 clap 的英文列表。
fn localize_possible_values(arg: Arg) -> Arg {
    let takes_values = arg.get_action().takes_values();
    let values: Vec<String> = (arg.get_possible_values().iter())
        .filter(|v| !v.is_hide_set())
        .filter_map(|v| Some(format!("  {}：{}", v.get_name(), v.get_help()?)))
        .collect();
    if !takes_values || values.is_empty() || arg.is_hide_possible_values_set() {
        return arg;
    }
    let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
    arg.hide_possible_values(true)
        .long_help(format!("{help}\n取值：\n{}", values.join("\n")))
}

/// 解析命令行；出错时打印中文说明并以非零码退出（要求帮助时打印帮助并以 0 退出）。
pub fn parse<P: CommandFactory + FromArgMatches>() -> P {
    let cmd = localize(P::command());
    let result = cmd.try_get_matches().and_then(|m| P::from_arg_matches(&m));
    match result {
        Ok(p) => p,
        Err(e) => match e.kind() {
            // clap 在用法一行里写死了英文的 “[OPTIONS]”
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                print!("{}", e.render().to_string().replace("[OPTIONS]", "[选项]"));
                std::process::exit(0)
            }
            // 不带参数运行时列出全部实验，这不是错误
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                let _ = e.print();
                std::process::exit(0)
            }
            _ => {
                eprintln!("错误：{}\n用 `--help` 查看用法。", describe(&e));
                std::process::exit(2)
            }
        },
    }
}

/// 一条 clap 错误的中文描述。
pub fn describe(e: &clap::Error) -> String {
    let ctx = |k| match e.get(k) {
        Some(ContextValue::String(s)) => s.clone(),
        Some(ContextValue::Strings(v)) => v.join("、"),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let cause = std::error::Error::source(e)
        .map(|s| s.to_string())
        .unwrap_or_default();
    match e.kind() {
        ErrorKind::InvalidValue | ErrorKind::ValueValidation => {
            let reason = if cause.is_empty() {
                String::new()
            } else {
                format!("：{cause}")
            };
            format!(
                "参数 {} 的取值 `{}` 无效{reason}",
                ctx(ContextKind::InvalidArg),
                ctx(ContextKind::InvalidValue)
            )
        }
        ErrorKind::InvalidSubcommand => {
            format!("没有名为 `{}` 的实验", ctx(ContextKind::InvalidSubcommand))
        }
        ErrorKind::UnknownArgument => format!("不认识的参数 `{}`", ctx(ContextKind::InvalidArg)),
        ErrorKind::MissingRequiredArgument => {
            format!("缺少必需的参数 {}", ctx(ContextKind::InvalidArg))
        }
        ErrorKind::TooManyValues | ErrorKind::ArgumentConflict => {
            format!("参数 {} 用法不对", ctx(ContextKind::InvalidArg))
        }
        _ => format!("命令行参数有误（{}）", e.kind()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    #[command(name = "demo")]
    struct Demo {
        /// 一个数
        #[arg(long)]
        n: u32,
    }

    fn err(args: &[&str]) -> clap::Error {
        let m = localize(Demo::command()).try_get_matches_from(args);
        m.and_then(|m| Demo::from_arg_matches(&m)).unwrap_err()
    }

    #[test]
    fn errors_are_described_in_chinese_naming_the_argument() {
        let e = err(&["demo", "--n", "abc"]);
        assert!(
            describe(&e).starts_with("参数 --n <N> 的取值 `abc` 无效"),
            "{}",
            describe(&e)
        );
        assert_eq!(
            describe(&err(&["demo", "--n", "1", "--m"])),
            "不认识的参数 `--m`"
        );
        assert!(describe(&err(&["demo"])).starts_with("缺少必需的参数 --n"));
    }

    #[test]
    fn help_is_chinese() {
        let help = localize(Demo::command()).render_help().to_string();
        assert!(
            help.contains("用法：") && help.contains("显示帮助") && help.contains("选项"),
            "{help}"
        );
        assert!(!help.contains("Options"), "{help}");
    }
}
