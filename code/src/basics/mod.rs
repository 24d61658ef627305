//! 第 0 部分 · dfdx 与编译期形状。
//!
//! | 文件 | 章节 |
//! | --- | --- |
//! | `tensors.rs` | 0.1 张量 |
//! | `device.rs` | 0.2 设备 |
//! | `shapes.rs` | 0.3 编译期形状与运行期维度 |
//! | `autodiff.rs` | 0.4 自动微分与梯度检查 |

pub mod autodiff;
pub mod device;
pub mod shapes;
pub mod tensors;
