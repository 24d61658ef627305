#!/usr/bin/env python3
"""为链接 CUDA 版本生成“桩”共享库：libcuda、libcublas、libcublasLt、libnvrtc。

dfdx 0.13 用的 cudarc 0.9 在编译期直接链接这四个库（`cargo:rustc-link-lib=dylib=…`），
链接器只需要它们导出的符号名；真正的库在有 GPU 的机器上由动态链接器加载。
NVIDIA 的工具包为驱动库提供了同样用途的 `lib64/stubs/libcuda.so`；PyPI 上没有它，
cuBLAS 的 wheel 又有七百多 MB，所以这里从 cudarc 自己的绑定（`src/*/sys.rs` 里 extern "C" 声明的函数）生成桩。

- 桩库的 SONAME：libcuda.so.1（驱动的正式名字），其余三个不带版本号（libcublas.so 等），
  让同一个二进制在装了 CUDA 12 或 13 运行库的机器上都能用（运行脚本为找到的库建同名链接）。
- 桩函数：libcuda 的函数一律返回 CUDA_ERROR_NO_DEVICE（100），cuGetErrorString/cuGetErrorName 给出说明文字。
  于是在没有 GPU 的机器上用桩库启动程序，`--device cuda` 会得到“没有 GPU”的清楚错误，而不是崩溃——这就是 CPU 上的演练。
  其余库的函数返回各自的“未初始化/内部错误”码：设备初始化失败之后，它们不会被调用。

用法：python3 cuda_stubs.py <cudarc 源码目录> <输出目录>
"""
import re
import subprocess
import sys
from pathlib import Path

LIBS = {
    # 库名: (cudarc 的绑定文件, SONAME, 函数的默认返回值)
    "cuda": ("driver/sys.rs", "libcuda.so.1", 100),  # CUDA_ERROR_NO_DEVICE
    "cublas": ("cublas/sys.rs", "libcublas.so", 1),  # CUBLAS_STATUS_NOT_INITIALIZED
    "cublasLt": ("cublaslt/sys.rs", "libcublasLt.so", 1),
    "nvrtc": ("nvrtc/sys.rs", "libnvrtc.so", 11),  # NVRTC_ERROR_INTERNAL_ERROR
}

# libcuda 里要有真实行为的函数：错误说明（cudarc 格式化错误时调用，并 unwrap 其结果）
SPECIAL = {
    "cuGetErrorString": 'int cuGetErrorString(int e, const char **s) {\n'
    '    *s = e == 100 ? "no CUDA-capable device is detected (llm-book stub libcuda)" '
    ': "unknown error (llm-book stub libcuda)";\n    return 0;\n}\n',
    "cuGetErrorName": 'int cuGetErrorName(int e, const char **s) {\n'
    '    *s = e == 100 ? "CUDA_ERROR_NO_DEVICE" : "CUDA_ERROR_UNKNOWN";\n    return 0;\n}\n',
}


def functions(sys_rs: Path):
    text = sys_rs.read_text()
    names = []
    for block in re.finditer(r'extern "C" \{(.*?)\n\}', text, re.S):
        names += re.findall(r"pub fn (\w+)\s*\(", block.group(1))
    return sorted(set(names))


def main():
    if len(sys.argv) != 3:
        sys.exit("用法：python3 cuda_stubs.py <cudarc 源码目录> <输出目录>")
    src, out = Path(sys.argv[1]) / "src", Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    for lib, (rs, soname, code) in LIBS.items():
        names = functions(src / rs)
        if len(names) < 10:
            sys.exit(f"{src / rs} 里只找到 {len(names)} 个函数：cudarc 的绑定格式变了？")
        body = [f"/* 由 code/scripts/cuda_stubs.py 生成：{lib} 的桩，只用于链接与 CPU 上的演练 */\n"]
        for n in names:
            body.append(SPECIAL[n] if lib == "cuda" and n in SPECIAL else f"int {n}(void) {{ return {code}; }}\n")
        c = out / f"lib{lib}.c"
        c.write_text("".join(body))
        so = out / f"lib{lib}.so"
        subprocess.run(
            ["gcc", "-shared", "-fPIC", "-O1", "-w", f"-Wl,-soname,{soname}", "-o", str(so), str(c)],
            check=True,
        )
        c.unlink()
        if soname != so.name:
            link = out / soname
            link.unlink(missing_ok=True)
            link.symlink_to(so.name)
        print(f"  {so.name}（SONAME {soname}）：{len(names)} 个函数")


if __name__ == "__main__":
    main()
