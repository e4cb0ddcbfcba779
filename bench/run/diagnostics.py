"""Router diagnostics for routed methods (MoR, MoE-LoRA): do experts specialise by task?

For each task, the test prompts go through the adapted model with every router recording
its gates; per layer and task we keep the mean gate per expert (the expert *load*) and the
mean per-token routing entropy (nats; uniform routing gives log N). Real tokens only.
"""

from __future__ import annotations

import math

import torch

from lorabench.api.routing import Router


@torch.no_grad()
def routing_diagnostics(
    model, tokenizer, prompts_by_task: dict[str, list[str]], batch_size: int = 32
) -> dict | None:
    """``{"num_experts": N, "layers": {layer: {task: {"load": [...], "entropy": h}}}}`` or None."""
    routers = {
        name.removesuffix(".router"): m
        for name, m in model.named_modules()
        if isinstance(m, Router)
    }
    if not routers:
        return None
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    layers: dict[str, dict] = {name: {} for name in routers}
    try:
        for router in routers.values():
            router.record_gates = True
        for task, prompts in prompts_by_task.items():
            sums = {name: None for name in routers}
            entropy = dict.fromkeys(routers, 0.0)
            tokens = 0
            for start in range(0, len(prompts), batch_size):
                enc = tokenizer(
                    prompts[start : start + batch_size],
                    return_tensors="pt",
                    padding=True,
                    add_special_tokens=False,
                ).to(device)
                model(**enc)
                real = enc["attention_mask"].reshape(-1).bool()
                tokens += int(real.sum())
                for name, router in routers.items():
                    gates = router.last_gates[real].float()
                    load = gates.sum(0)
                    sums[name] = load if sums[name] is None else sums[name] + load
                    entropy[name] += float(-(gates * gates.clamp_min(1e-12).log()).sum())
            for name in routers:
                layers[name][task] = {
                    "load": [round(v, 6) for v in (sums[name] / tokens).tolist()],
                    "entropy": round(entropy[name] / tokens, 6),
                }
    finally:
        for router in routers.values():
            router.record_gates = False
            router.last_gates = None
        model.train(was_training)
    num_experts = next(iter(routers.values())).num_experts
    return {"num_experts": num_experts, "max_entropy": math.log(num_experts), "layers": layers}
