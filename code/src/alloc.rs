//! 全局分配器的设置（附录 B）。
//!
//! 训练时每一步都分配、释放许多几 MB 到几百 MB 的缓冲区（激活、梯度）。glibc 的 malloc 与默认设置的 mimalloc
//! 都会把释放的大块内存很快还给操作系统，下一步再要回来：每一页都要缺页、由内核清零（`clear_page_erms`），
//! 两个线程之间还要刷新 TLB。在本书的 2 核虚拟机上，这占了 bert-base 一步的两成多。
//! 本书的程序与基准测试用 mimalloc 作全局分配器，并让它**不归还**释放的内存：峰值内存不变，缺页只在第一步发生。

/// mimalloc 的 `mi_option_purge_delay`（`mimalloc.h` 里 `mi_option_e` 的第 15 项）：释放的内存过多少毫秒
/// 还给操作系统，−1 表示从不归还；mimalloc v3（libmimalloc-sys 默认编译的版本）的默认值是 1000。
/// Rust 的绑定里没有这个常量，编号由下面的测试核对。
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// 让 mimalloc 不把释放的内存还给操作系统。在 `main` 与基准测试的开头调用一次。
pub fn keep_freed_memory() {
    // SAFETY：mi_option_set 只写 mimalloc 的一个全局选项，任何时候调用都安全。
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

/// `/proc/self/status` 里一项内存计数（`"VmRSS:"`、`"VmHWM:"`……）的字节数；不是 Linux 或读不到时为 `None`。
pub fn proc_status_bytes(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

/// 量一段代码的峰值内存之前调用（附录 B 的内存例子）：把 mimalloc 的空闲内存还给系统、记下此刻的常驻内存（字节），
/// 再把峰值计数（VmHWM）清零；之后恢复“不归还”。返回清零前的常驻内存。
pub fn reset_peak() -> std::io::Result<f64> {
    // SAFETY：mi_collect 只整理 mimalloc 自己的空闲内存。
    unsafe { libmimalloc_sys::mi_collect(true) };
    let resident = proc_status_bytes("VmRSS:")
        .ok_or_else(|| std::io::Error::other("读不到 /proc/self/status（需要 Linux）"))?;
    std::fs::write("/proc/self/clear_refs", "5")?;
    keep_freed_memory();
    Ok(resident)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 选项的编号对：读到的是 purge_delay 的默认值 1000（v3 的 `options.c`），编号错了会读到别的选项。
    #[test]
    fn purge_delay_option_has_the_documented_default() {
        // SAFETY：只读一个全局选项。
        let v = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert!(v == 1000 || v == -1, "mi_option_purge_delay = {v}");
    }
}
