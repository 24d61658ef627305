"""4.5 节思考题 3：把 LoRA 合并进 NF4 的基座再重新量化，sBA 还剩下多少？

用法：python3 code/scripts/requantize_merged.py 模型目录 适配器目录 [结果.json]
（需要 torch、bitsandbytes、safetensors；适配器由 `finetune --quantize nf4` 训练得到，缩放系数按 adapter_config.json 的 α/r。）

对每个有 LoRA 的线性层：Wq = 还原(NF4(W))，合并后的权重 Wq + sBA 再量化一次得 W2，留下的更新是 W2 − Wq。
打印 ‖sBA‖/‖W‖、留下的更新与 sBA 的相对误差、还原值变了的元素的比例（全部层合起来算；一组的 absmax 变了，
这一组的还原值就全变，所以这不是“码变了”的比例）。给了第三个参数时另把这几个数写成 JSON。
NF4 的还原用 bitsandbytes 自己的通用实现（它在 CPU 上的 C++ 内核在列数不是 64 的倍数时会算错，见 4.5 节“常见陷阱”）。
"""

import json
import sys
from pathlib import Path

import bitsandbytes.functional as F
import torch
from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
from bitsandbytes.backends.utils import _get_4bit_code
from safetensors.torch import load_file


def nf4_round_trip(w):
    packed, state = F.quantize_4bit(w.contiguous(), blocksize=64, quant_type="nf4")
    code = _get_4bit_code("nf4", w.device)
    return _dequantize_4bit_compute(packed.reshape(-1), state.absmax, code, 64, w.shape, torch.float32)


def main(model_dir, adapter_dir, out=None):
    base = load_file(str(Path(model_dir) / "model.safetensors"))
    adapter = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    s = config["lora_alpha"] / config["r"]
    err = delta = changed = total = weight = 0.0
    for key, a in adapter.items():
        if not key.endswith("lora_A.weight"):
            continue
        stem = key[len("base_model.model."):-len(".lora_A.weight")]
        w = base[f"{stem}.weight"].float()
        d = s * adapter[key.replace("lora_A", "lora_B")].float() @ a.float()
        wq = nf4_round_trip(w)
        w2 = nf4_round_trip(wq + d)
        err += ((w2 - wq - d) ** 2).sum().item()
        delta += (d ** 2).sum().item()
        changed += (w2 != wq).sum().item()
        total += w.numel()
        weight += (w ** 2).sum().item()
    result = {
        "model": str(model_dir), "adapter": str(adapter_dir), "scaling": s,
        "update_over_weight": (delta / weight) ** 0.5,
        "kept_update_relative_error": (err / delta) ** 0.5,
        "changed_values": changed / total,
    }
    print(f"‖sBA‖/‖W‖ = {result['update_over_weight']:.4f}；重新量化后留下的更新与 sBA 的相对误差 "
          f"{result['kept_update_relative_error']:.3f}；还原值变了的元素 {100 * result['changed_values']:.1f}%")
    if out:
        Path(out).write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:4])
