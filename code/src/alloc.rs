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
