"""附录 B 的同行比较，PyTorch 一侧：transformers 的 BertModel 读同一个目录，在 CPU 上对 [batch, seq] 推理（torch.no_grad），
先空跑一次，再计时 rounds 次，打印一行 JSON（毫秒）。输入与本书、candle 两侧相同（见 examples/peer_inference.rs）。

用法：python3 code/scripts/peer_torch.py 模型目录 batch seq rounds
      python3 code/scripts/peer_torch.py --make-bert-base 目录 词表目录   写一个随机权重的 bert-base（词表 30522，取自词表目录的 vocab.txt）
      python3 code/scripts/peer_torch.py --train batch seq rounds          bert-base-chinese 大小（随机权重）的全量微调一步：前向、交叉熵、反向
                                                                           （不含优化器；dropout 0.1，与本书的 step_timing 相同）
需要 torch 与 transformers。
"""
import json
import os
import shutil
import sys
import time


def main():
    try:
        import torch
        from transformers import BertConfig, BertModel
    except ImportError:
        print("需要 torch 与 transformers（pip install torch transformers）", file=sys.stderr)
        sys.exit(2)
    torch.set_num_threads(os.cpu_count() or 1)
    args = sys.argv[1:]
    if args[:1] == ["--make-bert-base"] and len(args) == 3:
        torch.manual_seed(0)
        cfg = BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                         intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2)
        BertModel(cfg).save_pretrained(args[1], safe_serialization=True)
        shutil.copy(os.path.join(args[2], "vocab.txt"), os.path.join(args[1], "vocab.txt"))
        return
    if args[:1] == ["--train"] and len(args) == 4:
        from transformers import BertForSequenceClassification
        batch, seq, rounds = int(args[1]), int(args[2]), int(args[3])
        torch.manual_seed(0)
        cfg = BertConfig(vocab_size=21128, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                         intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2,
                         hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, num_labels=2)
        model = BertForSequenceClassification(cfg).train()
        ids = torch.tensor([(i * 7919 + 13) % 21128 for i in range(batch * seq)]).reshape(batch, seq)
        labels = torch.tensor([i % 2 for i in range(batch)])
        times = []
        for r in range(rounds + 1):
            t = time.perf_counter()
            model.zero_grad(set_to_none=True)
            model(input_ids=ids, labels=labels).loss.backward()
            if r > 0:
                times.append((time.perf_counter() - t) * 1e3)
        times.sort()
        print(json.dumps({"impl": "torch", "median_ms": times[len(times) // 2], "min_ms": times[0], "max_ms": times[-1],
                          "torch": torch.__version__}))
        return
    if len(args) != 4:
        print(__doc__, file=sys.stderr)
        sys.exit(1)
    path, batch, seq, rounds = args[0], int(args[1]), int(args[2]), int(args[3])
    model = BertModel.from_pretrained(path).eval()
    vocab = model.config.vocab_size
    ids = torch.tensor([1000 + (i * 7919) % (vocab - 1000) for i in range(batch * seq)]).reshape(batch, seq)
    times = []
    with torch.no_grad():
        for r in range(rounds + 1):
            t = time.perf_counter()
            model(input_ids=ids).last_hidden_state.sum().item()
            if r > 0:
                times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    print(json.dumps({"impl": "torch", "median_ms": times[len(times) // 2], "min_ms": times[0], "max_ms": times[-1],
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
