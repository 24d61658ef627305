"""附录 B：PyTorch 一侧的同一组测量（与 code/benches/kernels.rs 相同的算子、形状与线程数）。

用法：python3 code/scripts/bench_torch.py 输出.json [--device cuda]
没有安装 torch 时打印说明并以状态 2 退出（bench.sh 据此跳过比值）。
--device cuda：只测训练一步（编码器 d512、bert-base 全量与 LoRA），在 GPU 上，与 benches/cuda_step.rs 对照（run-gpu.sh 用）。
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
    """中位数，毫秒（先空跑 3 次：第一次要分配内存）。"""
    for _ in range(3):
        fn()
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


class SeedEncoder(torch.nn.Module):
    """第 1 部分的参考编码器：词嵌入 + 正弦位置编码 + 6 层 Pre-LN（ReLU，dropout 0.1）+ 最后的 LayerNorm。"""

    def __init__(self, vocab=10000, d=512, heads=8, ff=2048, layers=6, max_len=512):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, d)
        pos = torch.arange(max_len)[:, None]
        freq = torch.exp(torch.arange(0, d, 2) * (-torch.log(torch.tensor(10000.0)) / d))
        pe = torch.zeros(max_len, d)
        pe[:, 0::2] = torch.sin(pos * freq)
        pe[:, 1::2] = torch.cos(pos * freq)
        self.register_buffer("pe", pe)
        layer = torch.nn.TransformerEncoderLayer(d, heads, ff, dropout=0.1, batch_first=True, norm_first=True)
        self.layers = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(d)
        self.scale = d**0.5

    def forward(self, tokens):
        x = self.embed(tokens) * self.scale + self.pe[: tokens.shape[1]]
        return self.norm(self.layers(x))


def timed_step(step, min_run_time):
    step()  # 预热（第一次分配梯度缓冲区）
    t = benchmark.Timer(stmt="step()", globals={"step": step}, num_threads=THREADS)
    return t.blocked_autorange(min_run_time=min_run_time).median * 1e3


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def train_steps(device="cpu"):
    """训练一步（前向 + 反向，不含优化器）：与 code/benches/train_step.rs 相同的模型与形状。"""
    ms = {}
    enc = SeedEncoder().train().to(device)
    for b, s in [(8, 128), (2, 50)]:
        tokens = torch.randint(0, 10000, (b, s), device=device)
        g = torch.randn(b, s, 512, device=device)

        def step():
            enc.zero_grad(set_to_none=True)
            enc(tokens).backward(g)
            sync(device)

        ms[f"train_step_encoder_d512/{b}x{s}"] = timed_step(step, 5.0)
        print(f"encoder d512 [{b},{s}]：{ms[f'train_step_encoder_d512/{b}x{s}']:.1f} 毫秒")
    try:
        from transformers import BertConfig, BertForSequenceClassification
        from peft import LoraConfig, get_peft_model
    except ImportError:
        print("没有 transformers/peft：跳过 bert-base 的训练步", file=sys.stderr)
        return ms
    cfg = BertConfig(
        vocab_size=21128, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2,
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.0, num_labels=2,
    )
    tokens = torch.randint(0, 21128, (8, 128), device=device)
    labels = torch.tensor([0, 1] * 4, device=device)
    full = BertForSequenceClassification(cfg).train().to(device)
    lora = get_peft_model(
        BertForSequenceClassification(cfg).train().to(device),
        LoraConfig(task_type="SEQ_CLS", r=16, lora_alpha=32, target_modules=["query", "value"], lora_dropout=0.0),
    )
    for name, model in [("full_8x128", full), ("lora_8x128", lora)]:
        def step():
            model.zero_grad(set_to_none=True)
            model(input_ids=tokens, labels=labels).loss.backward()
            sync(device)

        ms[f"train_step_bert_base/{name}"] = timed_step(step, 20.0)
        print(f"bert-base {name}：{ms[f'train_step_bert_base/{name}']:.0f} 毫秒")
        # 优化器的一步：全局范数裁剪到 1 + AdamW（与本书的 AdamW::step 相同），梯度就是上面最后一步留下的
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)

        def opt_step():
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sync(device)

        key = f"optimizer_bert_base/adamw_{name.split('_')[0]}"
        ms[key] = timed_step(opt_step, 5.0)
        print(f"AdamW（bert-base {name.split('_')[0]}）：{ms[key]:.1f} 毫秒")
    return ms


def main(out, device):
    if device == "cuda":
        result = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0), "ms": train_steps("cuda")}
        with open(out, "w") as f:
            json.dump(result, f, indent=2, ensure_ascii=False)
        return
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
        "dropout": (lambda t: F.dropout(t, 0.1, training=True), x, torch.randn_like(x)),
    }
    ms = {}
    for name, (op, inp, g) in ops.items():
        ms[f"{name}/fwd"], ms[f"{name}/fwd_bwd"] = fwd_and_bwd(op, inp, g)
        print(f"{name:>15}：前向 {ms[f'{name}/fwd']:.3f} 毫秒，前向 + 反向 {ms[f'{name}/fwd_bwd']:.3f} 毫秒")
    lin = torch.nn.Linear(M, FF)
    xg = torch.randn(B, S, M)
    with torch.no_grad():
        ms["gemm/fwd"] = timed(lambda: lin(xg))
    print(f"           gemm：前向 {ms['gemm/fwd']:.3f} 毫秒（{2 * B * S * M * FF / ms['gemm/fwd'] / 1e6:.0f} GFLOP/s）")
    ms.update(train_steps())
    result = {
        "torch": torch.__version__,
        "threads": THREADS,
        "python": platform.python_version(),
        "ms": ms,
    }
    with open(out, "w") as f:
        json.dump(result, f, indent=2, ensure_ascii=False)


if __name__ == "__main__":
    args = sys.argv[1:]
    device = "cpu"
    if args[1:] == ["--device", "cuda"]:
        device, args = "cuda", args[:1]
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        sys.exit(1)
    main(args[0], device)
