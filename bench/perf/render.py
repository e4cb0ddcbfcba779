"""The ``lorabench bench-layers`` result as markdown: the tables the CLI prints, and the
report file written beside the JSON (regenerated from the JSON alone, byte for byte)."""

from __future__ import annotations

#: table order (the JSON's keys are sorted): the references first, then the in-tree methods
ORDER = ("base", "peft-lora", "lora", "mora", "melora", "moe-lora", "moe-lora-top2", "mor")


def ordered(rows: dict[str, dict]) -> list[tuple[str, dict]]:
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(rows.items(), key=lambda kv: (rank.get(kv[0], len(ORDER)), kv[0]))


def render(result: dict) -> str:
    """The ratio tables and the targets, as markdown (what the CLI prints)."""
    from tabulate import tabulate

    def x(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    shape = result["shape"]
    layer_rows = [
        [
            name, f"{row['params']:,}", f"{row['forward_ms']:.1f}", x(row["forward_x_base"]),
            f"{row['train_ms']:.1f}", x(row["train_x_base"]), x(row.get("merged_x_base")),
            f"{row['peak_mb']:.1f}", f"{row['largest_mb']:.1f}",
        ]
        for name, row in ordered(result["layers"])
    ]  # fmt: skip
    floor_rows = [
        [
            name, f"{row['forward_flops'] / 1e9:.2f}", f"{row['train_flops'] / 1e9:.2f}",
            f"{row['train_extra_flops'] / 1e6:,.0f}", f"{row['forward_floor_ms']:.1f}",
            x(row["forward_x_floor"]), f"{row['train_floor_ms']:.1f}", x(row["train_x_floor"]),
        ]
        for name, row in ordered(result["layers"])
        if "train_flops" in row
    ]  # fmt: skip
    has_floor = all("flops" in row for row in result["train_step"].values())
    step_rows = [
        [
            name,
            f"{row['params']:,}",
            f"{row['step_ms']:.1f}",
            x(row["x_frozen"]),
            x(row.get("x_lora")),
            *([f"{row['flops'] / 1e9:.2f}", x(row["step_x_floor"])] if has_floor else []),
        ]
        for name, row in ordered(result["train_step"])
    ]
    target_rows = [
        [t["target"], t["worst"], f"{t['ratio']:.3f}", "met" if t["met"] else "missed"]
        for t in result["targets"]
    ]
    lines = [
        f"One layer: d_in {shape['d_in']}, d_out {shape['d_out']}, {shape['tokens']} tokens, fp32, "
        f"{result['torch_threads']} threads; medians of {result['rounds']} interleaved rounds.",
        "",
        tabulate(
            layer_rows,
            headers=[
                "layer",
                "trainable",
                "fwd ms",
                "fwd × base",
                "fwd+bwd ms",
                "fwd+bwd × base",
                "merged fwd × base",
                "peak MiB",
                "largest MiB",
            ],
            tablefmt="github",
            disable_numparse=True,
        ),  # fmt: skip
    ]
    if floor_rows:
        lines += [
            "",
            "Arithmetic floor of the layer: matmul GFLOP counted from the shapes; floor = the "
            "base's time × FLOP ratio (the variant's arithmetic at the base's FLOP rate); "
            "× floor near 1 = slow by arithmetic, well above 1 = overhead.",
            "",
            tabulate(
                floor_rows,
                headers=[
                    "layer", "fwd GFLOP", "fwd+bwd GFLOP", "extra fwd+bwd MFLOP",
                    "fwd floor ms", "fwd × floor", "fwd+bwd floor ms", "fwd+bwd × floor",
                ],
                tablefmt="github",
                disable_numparse=True,
            ),
        ]  # fmt: skip
    if step_rows:
        step_headers = ["method", "trainable", "step ms", "× frozen base", "× lora"]
        lines += [
            "",
            "Train step of the tiny model (batch 16 × 64 tokens, AdamW); base = frozen-base step"
            + ("; GFLOP of forward+backward, × floor as above." if has_floor else "."),
            "",
            tabulate(
                step_rows,
                headers=step_headers + (["GFLOP", "× floor"] if has_floor else []),
                tablefmt="github",
                disable_numparse=True,
            ),  # fmt: skip
        ]
    if target_rows:
        lines += [
            "",
            tabulate(
                target_rows,
                headers=["target", "worst", "ratio", ""],
                tablefmt="github",
                disable_numparse=True,
            ),  # fmt: skip
        ]
    return "\n".join(lines)


def render_markdown(result: dict, json_name: str) -> str:
    """The report file: a heading naming the command and machine, then :func:`render`."""
    env = result.get("env", {})
    machine = env.get("cpu_model") or env.get("machine", "unknown CPU")
    torch_version = env.get("versions", {}).get("torch", "?")
    return (
        f"# `lorabench bench-layers` on {env.get('cpu_count', '?')} CPU cores\n\n"
        f"Produced by `{result['command']}` on {machine} (torch {torch_version}, "
        f"{result['torch_threads']} threads). `{json_name}` beside this file holds every "
        f"number and the environment; `lorabench bench-layers --render {json_name}` "
        "regenerates this file from it.\n\n" + render(result) + "\n"
    )
