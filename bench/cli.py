"""The `lorabench` command line. The only module that parses arguments and prints.

Library errors (:class:`lorabench.errors.LorabenchError`) become one-line messages and exit
status 2; Ctrl-C becomes one line saying what finished, and exit status 130.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from lorabench.errors import Interrupted, LorabenchError


def cmd_list(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from lorabench.api.registry import available_methods, get_method

    if args.json:
        out = {}
        for name in available_methods():
            spec = get_method(name)
            out[name] = {
                "description": spec.description,
                "mergeable": spec.mergeable,
                "size_knob": spec.size_knob,
                "fields": {f: {"type": t, "default": d, "help": h} for f, t, d, h in spec.fields()},
            }
        print(json.dumps(out, indent=2))
        return 0
    for name in available_methods():
        spec = get_method(name)
        merge = "mergeable" if spec.mergeable else "not mergeable"
        knob_text = f"size knob: {spec.size_knob}" if spec.size_knob else "no size knob"
        print(f"{name} — {spec.description} [{merge}; {knob_text}]")
        rows = [(f, t, repr(d), h) for f, t, d, h in spec.fields()]
        print(tabulate(rows, headers=["field", "type", "default", "meaning"], tablefmt="simple"))
        print()
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    from lorabench.api.inject import count_parameters, formula_parameters, inject
    from lorabench.api.registry import build_config, get_method, parse_assignments
    from lorabench.models.zoo import build_on_meta, load_config

    spec = get_method(args.method)
    config = build_config(spec, parse_assignments(args.set or []))
    model = build_on_meta(load_config(args.model))
    base_params = count_parameters(model)[1]
    injection = inject(model, spec, config, args.targets)
    trainable, _ = count_parameters(model)
    result = {
        "model": args.model,
        "method": spec.name,
        "config": injection.to_json()["config"],
        "targets": injection.targets,
        "adapted_modules": len(injection.modules),
        "trainable_params": trainable,
        "formula_params": formula_parameters(model, injection),
        "base_params": base_params,
        "percent": round(100.0 * trainable / base_params, 6),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{spec.name} on {args.model}: {trainable:,} trainable parameters "
            f"({result['percent']:.4f} % of {base_params:,}) in {len(injection.modules)} layers"
        )
    return 0


def _parse_seeds(text: str | None) -> list[int] | None:
    """``3`` → seeds 0, 1, 2; ``0,5,7`` → those seeds. Empty or repeated seeds are errors."""
    if text is None:
        return None
    from lorabench.errors import ConfigError

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(
            f"--seeds: expected N or a comma-separated list of integers, got {text!r}"
        ) from None
    if not values:
        raise ConfigError(f"--seeds: no seed in {text!r}; give N or a list such as 0,1,2")
    if len(values) == 1 and "," not in text:
        if values[0] < 1:
            raise ConfigError(f"--seeds: expected N >= 1, got {values[0]}")
        return list(range(values[0]))
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ConfigError(
            f"--seeds: seed(s) {', '.join(map(str, repeated))} given more than once in {text!r}"
        )
    return values


def cmd_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tabulate import tabulate

    from lorabench import selection
    from lorabench.errors import ConfigError
    from lorabench.records import check_writable
    from lorabench.run.launch import make_launcher
    from lorabench.run.protocol import run_protocol, split_stages
    from lorabench.run.suite import load_suite, plan
    from lorabench.run.tracking import check_tracker

    if args.address and not args.ray:
        raise ConfigError("--address is the Ray cluster to run on; it needs --ray")
    seeds = _parse_seeds(args.seeds)
    check_tracker(args.log)  # a missing TensorBoard is a one-line error before anything runs
    launcher = make_launcher(ray=args.ray, address=args.address)
    suite = load_suite(args.suite)
    out = Path(args.out) if args.out else Path("results") / suite.settings.name
    check_writable(out, "--out")
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    runs = plan(
        suite,
        methods=methods,
        seeds=seeds,
        device=args.device,
        trust_suite_code=args.trust_suite_code,
    )
    first, later = split_stages(runs)
    if args.dry_run:
        rows = [
            (r.run_id, r.label, selection.point_text(selection.point_of(r.config)) or "", r.seed,
             (r.config["budget"] or {}).get("reached", ""), "2 (if chosen)" if r in later else "1")
            for r in runs
        ]  # fmt: skip
        print(tabulate(rows, headers=["run", "method", "grid point", "seed", "budget", "stage"]))
        if later:
            print(
                f"\nstage 1: {len(first)} runs; stage 2: the other seeds at each method's point "
                f"selected on validation ({selection.RULE})"
            )
        return 0
    command = "lorabench " + " ".join(args.argv)
    options = dict(
        retry_failed=args.retry_failed, command=command, progress=not args.no_progress,
        log_samples=args.log_samples, tracker=args.log,
    )  # fmt: skip
    outcome = run_protocol(launcher, suite, runs, out, **options)
    rows = []
    for r in sorted(outcome.records, key=lambda r: (r["label"], r["seed"], r["run_id"])):
        m = r.get("metrics", {})
        acc = m.get("accuracy")
        val = (m.get("validation") or {}).get("macro_avg")
        tps = m.get("train_tokens_per_s")
        rows.append((
            r["label"], selection.point_text(selection.point_of(r)) or "", r["seed"], r["status"],
            f"{val:.3f}" if val is not None else "n/a",
            f"{acc:.3f}" if acc is not None else "n/a",
            f"{m['trainable_params']:,}" if "trainable_params" in m else "n/a",
            f"{tps:,.0f}" if tps else "n/a",
            "skipped (recorded)" if r in outcome.skipped else f"{m.get('wall_time_s', 0):.0f} s",
        ))  # fmt: skip
    for run, holder in outcome.held:
        point = selection.point_text(selection.point_of(run.config)) or ""
        rows.append((run.label, point, run.seed, "running elsewhere", "n/a", "n/a", "n/a", "n/a",
                     f"held by {holder}"))  # fmt: skip
    headers = ["method", "grid point", "seed", "status", "validation", "test accuracy"]
    print(tabulate(rows, headers=[*headers, "trainable", "tokens/s", "time"]))
    for label, choice in sorted(outcome.choices.items()):
        score = "n/a" if choice.score is None else f"{choice.score:.3f}"
        print(
            f"{label}: {selection.point_text(choice.point)} selected on validation "
            f"(seed {choice.seed}, macro {score}; {len(choice.candidates)} points)"
        )
    print(f"records: {out / 'runs'}")
    if outcome.held:
        names = ", ".join(run.run_id for run, _ in outcome.held)
        print(
            f"skipped {len(outcome.held)} run(s) that another lorabench process is running: "
            f"{names}; their records appear in {out / 'runs'} when it finishes"
        )
    failed = [r for r in outcome.records if r["status"] != "ok"]
    return 1 if failed else 0


def cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lorabench.records import check_writable, write_json_atomic
    from lorabench.run.rescore import Overrides, render, rescore

    if args.out:
        check_writable(Path(args.out).parent, "--out")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    overrides = Overrides(tasks, args.tasks_dir, args.limit, args.num_fewshot, args.batch_size)
    result = rescore(
        args.run, overrides, results=args.results, device=args.device,
        check_base=not args.any_base, progress=not args.no_progress,
    )  # fmt: skip
    print(render(result))
    if args.out:
        write_json_atomic(Path(args.out), result)
        print(f"saved {args.out}")
    return 1 if result["reproduces"] is False else 0


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lorabench.report.document import write_report

    out = Path(args.out) if args.out else Path(args.results) / "report"
    written = write_report(
        Path(args.results),
        out,
        baseline=args.baseline or "lora",
        merge=args.merge,
        check_baseline=args.baseline is not None,
        warn=lambda line: print(f"lorabench: warning: {line}", file=sys.stderr),
    )
    for path in written:
        print(path)
    return 0


def cmd_make_tasks(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lorabench.records import check_writable
    from lorabench.tasks.synthetic import load_split, write_tasks

    check_writable(args.out, "--out")
    for task in write_tasks(args.out, args.seed):
        train, val, test = (
            len(load_split(args.out, task, split)) for split in ("train", "validation", "test")
        )
        print(
            f"{task:18} train {train:5}  validation {val:4}  test {test:4}  {Path(args.out) / task}"
        )
    return 0


def cmd_bench_layers(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lorabench.api.registry import get_method
    from lorabench.errors import ConfigError
    from lorabench.perf.layers import LAYER_METHODS, LayerShape, run_benchmarks
    from lorabench.perf.render import render, render_markdown
    from lorabench.records import environment, write_json_atomic

    if args.render:  # the report file from a saved result; nothing is measured
        source = Path(args.render)
        try:
            result = json.loads(source.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--render {args.render}: not a bench-layers JSON ({exc})") from exc
        source.with_suffix(".md").write_text(render_markdown(result, source.name))
        print(f"wrote {source.with_suffix('.md')}")
        return 0
    methods = tuple(m.strip() for m in args.methods.split(",")) if args.methods else LAYER_METHODS
    for method in methods:
        get_method(method)  # UnknownMethodError names the registered ones
    for name in ("d_in", "d_out", "tokens", "rounds"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: expected a positive integer")
    result = run_benchmarks(
        LayerShape(args.d_in, args.d_out, args.tokens),
        methods,
        rounds=args.rounds,
        min_time=args.min_time,
        model_step=not args.no_model_step,
        progress=not args.no_progress,
    )
    result["env"] = environment("cpu")
    result["command"] = "lorabench " + " ".join(args.argv)
    print(render(result))
    if args.out:
        out = Path(args.out)
        write_json_atomic(out, result)
        out.with_suffix(".md").write_text(render_markdown(result, out.name))
        print(f"\nsaved {out} and {out.with_suffix('.md')}")
    return 0 if all(t["met"] for t in result["targets"]) or not args.strict else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lorabench", description="Compare LoRA variants fairly and reproducibly."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="registered methods, their config fields and defaults")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("params", help="trainable-parameter count of a method, without training")
    p.add_argument(
        "--model", default="tiny", help="'tiny', 'smollm2', a config.json, or a model folder"
    )
    p.add_argument("--method", required=True, help="registered method name (see `lorabench list`)")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="config override (repeatable)"
    )
    p.add_argument(
        "--targets", default="all-linear", help="comma-separated linear layer names, or all-linear"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("run", help="run a suite (resumable: recorded runs are skipped)")
    p.add_argument("suite", help="suite file, e.g. suites/tiny.toml")
    p.add_argument(
        "--methods",
        help="comma-separated labels to run, or plugin names (all of their entries); default: all",
    )
    p.add_argument(
        "--seeds", help="N (seeds 0..N-1) or a comma-separated list (default: the suite's)"
    )
    p.add_argument("--device", choices=["cpu", "cuda"], help="override the suite's device")
    p.add_argument("--out", help="results folder (default: results/<suite name>)")
    p.add_argument("--retry-failed", action="store_true", help="re-run failed/oom/nan runs")
    p.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--ray", action="store_true", help="run each run as a Ray task (pip install lorabench[ray])"
    )
    p.add_argument("--address", help="Ray cluster address (default: start a local instance)")
    p.add_argument(
        "--log",
        choices=["tensorboard"],
        help="write each run's training scalars to OUT/tensorboard/<run id> "
        '(pip install "lorabench[tensorboard]")',
    )
    p.add_argument(
        "--trust-suite-code",
        action="store_true",
        help="allow task configs with !function tags or Python files in tasks_dir "
        "(lm-eval imports and runs that code)",
    )
    p.add_argument(
        "--log-samples",
        action="store_true",
        help="also keep lm-eval's per-sample logs (OUT/lm_eval/<run_id>/samples_<task>.jsonl)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "eval", help="score a saved run again (its own tasks, or others) without training"
    )
    p.add_argument(
        "run",
        help="a record file RESULTS/runs/<run_id>.json, the run's adapter folder "
        "RESULTS/adapters/<run_id>, or a run id with --results",
    )
    p.add_argument("--results", help="the results folder holding a run id's runs/ and adapters/")
    p.add_argument("--tasks", help="comma-separated task names (default: the run's own tasks)")
    p.add_argument(
        "--tasks-dir",
        help="where --tasks come from: a tasks folder, 'commonsense', or '' for lm-eval's "
        "registry (default: the run's own)",
    )
    p.add_argument("--limit", type=int, help="items per task (default: the run's eval.limit)")
    p.add_argument("--num-fewshot", type=int, help="few-shot examples (default: the run's)")
    p.add_argument("--batch-size", type=int, help="lm-eval batch size (default: the run's)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: the run's)")
    p.add_argument(
        "--any-base",
        action="store_true",
        help="load the adapter even if the base model's weights differ from the run's",
    )
    p.add_argument("--out", help="also write the result as JSON to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("report", help="markdown + CSV + plots from a results folder")
    p.add_argument("results", help="results folder (holding runs/*.json)")
    p.add_argument("--out", help="report folder (default: RESULTS/report)")
    p.add_argument("--baseline", help="method label the others are compared with (default: lora)")
    p.add_argument(
        "--merge",
        action="store_true",
        help="report records of several suites or configs together (newest per run)",
    )
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "bench-layers", help="adapter cost as ratios to the frozen base (layer and train step)"
    )
    p.add_argument("--methods", help="comma-separated methods (default: the in-tree ones)")
    p.add_argument("--d-in", type=int, default=1024, help="layer input features")
    p.add_argument("--d-out", type=int, default=2816, help="layer output features")
    p.add_argument("--tokens", type=int, default=2048, help="tokens per layer call")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median taken)")
    p.add_argument("--min-time", type=float, default=0.5, help="seconds per timed measurement")
    p.add_argument("--no-model-step", action="store_true", help="skip the tiny-model train step")
    p.add_argument("--out", default="results/bench-layers.json", help="JSON file ('' = none)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--render", metavar="JSON", help="only (re)write JSON's .md report from a saved result"
    )
    p.set_defaults(func=cmd_bench_layers)

    p = sub.add_parser("make-tasks", help="(re)generate the embedded task data (YAML + JSONL)")
    p.add_argument("--out", default="suites/tasks", help="tasks folder to (re)write")
    p.add_argument("--seed", type=int, default=0, help="generation seed")
    p.set_defaults(func=cmd_make_tasks)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    args.argv = argv
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # its INFO lines are noise here
    try:
        return args.func(args)
    except Interrupted as exc:
        print(f"lorabench: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("lorabench: interrupted", file=sys.stderr)
        return 130
    except LorabenchError as exc:
        print(f"lorabench: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `lorabench list | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
