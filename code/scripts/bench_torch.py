"""附录 B：PyTorch 一侧的同一组测量（与 code/benches/kernels.rs 相同的算子、形状与线程数）。

用法：python3 code/scripts/bench_torch.py 输出.json
没有安装 torch 时打印说明并以状态 2 退出（bench.sh 据此跳过比值）。
"""
import json
import os
import platform
import sys

try:
    import torch
    import torch.nn.functional as F
    from torch.utils import benchmark
except ImportError:
    print("没有安装 torch：跳过 PyTorch 一侧的测量（pip install torch）", file=sys.stderr)
    sys.exit(2)

B, S, H, M, FF = 8, 128, 12, 768, 3072
THREADS = os.cpu_count() or 1
torch.set_num_threads(THREADS)
torch.manual_seed(0)


def timed(fn):
    """中位数，毫秒。"""
    t = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=THREADS)
    return t.blocked_autorange(min_run_time=2.0).median * 1e3


def fwd_and_bwd(op, x, g):
    """前向；前向 + 反向（上游梯度 g，与 Rust 一侧的 backward_from 相同）。"""
    xr = x.clone().requires_grad_(True)

    def fwd():
        with torch.no_grad():
            op(x)

    def fwd_bwd():
        xr.grad = None
        op(xr).backward(g)

    return timed(fwd), timed(fwd_bwd)


def main(out):
    scores = torch.randn(B, H, S, S)
    g4 = torch.randn(B, H, S, S)
    lengths = [S - 12 * i for i in range(B)]
    bias = torch.zeros(B, S)
    for i, n in enumerate(lengths):
        bias[i, n:] = -1e9
    bias = bias[:, None, None, :]
    h = torch.randn(B, S, FF)
    x = torch.randn(B, S, M)
    ln = torch.nn.LayerNorm(M, eps=1e-12)
    ops = {
        "softmax": (lambda t: F.softmax(t, dim=-1), scores, g4),
        "masked_softmax": (lambda t: F.softmax(t + bias, dim=-1), scores, g4),
        "gelu": (lambda t: F.gelu(t), h, torch.randn_like(h)),
        "layer_norm": (ln, x, torch.randn_like(x)),
    }
    ms = {}
    for name, (op, inp, g) in ops.items():
        ms[f"{name}/fwd"], ms[f"{name}/fwd_bwd"] = fwd_and_bwd(op, inp, g)
        print(f"{name:>15}：前向 {ms[f'{name}/fwd']:.3f} 毫秒，前向 + 反向 {ms[f'{name}/fwd_bwd']:.3f} 毫秒")
    result = {
        "torch": torch.__version__,
        "threads": THREADS,
        "python": platform.python_version(),
        "ms": ms,
    }
    with open(out, "w") as f:
        json.dump(result, f, indent=2, ensure_ascii=False)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(1)
    main(sys.argv[1])
