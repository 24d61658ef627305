"""附录 B：PyTorch 一侧的训练内存（与 examples/train_memory.rs 相同的模型、形状与优化器）。

用法：python3 code/scripts/memory_torch.py [输出.json]       两种训练（full、lora）各在一个子进程里跑，打印表格
      python3 code/scripts/memory_torch.py --arm full|lora  只跑一种，打印一行 JSON
需要 torch、transformers、peft；没有时打印说明并以状态 2 退出。环境变量 ROUNDS 是步数（默认 3，另先空跑一步）。

每种训练：建好模型（bert-base-chinese 大小，随机权重）与 AdamW 之后的常驻内存（VmRSS），清零峰值（/proc/self/clear_refs 写 5），
再训练若干步（前向 + 反向 + 梯度裁剪 + AdamW，[8,128]），报告峰值（VmHWM）、梯度与优化器状态的字节数、每步耗时的中位数。
"""
import json
import os
import subprocess
import sys
import time

MIB = 1048576.0


def status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return float(line.split()[1])
    raise RuntimeError(f"/proc/self/status 里没有 {field}")


def measure(arm):
    try:
        import torch
        from transformers import BertConfig, BertForSequenceClassification
        from peft import LoraConfig, get_peft_model
    except ImportError:
        print("需要 torch、transformers、peft（pip install torch transformers peft）", file=sys.stderr)
        sys.exit(2)
    rounds = int(os.environ.get("ROUNDS", "3"))
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=21128, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2,
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, num_labels=2,
    )
    model = BertForSequenceClassification(cfg).train()
    if arm == "lora":
        model = get_peft_model(model, LoraConfig(
            task_type="SEQ_CLS", r=8, lora_alpha=16, target_modules=["query", "value"], lora_dropout=0.0))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    tokens = torch.tensor([[(i * 7919 + 13) % 21128 for i in range(b * 128, (b + 1) * 128)] for b in range(8)])
    labels = torch.tensor([0, 1] * 4)
    time.sleep(0.5)
    resident = status_kib("VmRSS:") * 1024
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    times = []
    for r in range(rounds + 1):
        t = time.perf_counter()
        opt.zero_grad()
        model(input_ids=tokens, labels=labels).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if r > 0:
            times.append((time.perf_counter() - t) * 1e3)
    peak = status_kib("VmHWM:") * 1024
    times.sort()
    n_all = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in params)
    grads = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
    state = sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0)
    return {
        "arm": arm,
        "params_mib": 4 * n_all / MIB,
        "trainable": trainable,
        "grads_mib": grads / MIB,
        "optimizer_mib": state / MIB,
        "resident_mib": resident / MIB,
        "step_peak_mib": peak / MIB,
        "step_extra_mib": (peak - resident) / MIB,
        "step_ms": times[len(times) // 2],
        "torch": torch.__version__,
    }


def main():
    args = sys.argv[1:]
    if args[:1] == ["--arm"] and len(args) == 2 and args[1] in ("full", "lora"):
        print(json.dumps(measure(args[1])))
        return
    if len(args) > 1 or (args and args[0].startswith("-")):
        print(__doc__, file=sys.stderr)
        sys.exit(1)
    rows = []
    for arm in ("full", "lora"):
        out = subprocess.run([sys.executable, __file__, "--arm", arm], capture_output=True, text=True)
        if out.returncode != 0:
            sys.stderr.write(out.stderr)
            sys.exit(out.returncode)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("| 训练 | 可训练参数 | 参数 | 梯度 | AdamW 状态 | 建好后常驻 | 训练的峰值 | 峰值 − 常驻 | 每步 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['arm']} | {r['trainable']} | {r['params_mib']:.0f} | {r['grads_mib']:.1f} | {r['optimizer_mib']:.1f} | "
              f"{r['resident_mib']:.0f} | {r['step_peak_mib']:.0f} | {r['step_extra_mib']:.0f} | {r['step_ms']:.0f} 毫秒 |")
    ratio = rows[1]["step_peak_mib"] / rows[0]["step_peak_mib"]
    print(f"（MiB；LoRA 峰值 / 全量峰值 = {ratio:.2f}；torch {rows[0]['torch']}，{os.cpu_count()} 个线程）")
    if args:
        with open(args[0], "w") as f:
            json.dump({"rows": rows, "lora_over_full_peak": ratio}, f, indent=2, ensure_ascii=False)


if __name__ == "__main__":
    main()
