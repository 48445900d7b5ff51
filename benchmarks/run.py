"""Run the benchmark suite and write BENCHMARKS.md.

    .venv/bin/python -m benchmarks.run            # full suite on the real default model (~20 min on 2 busy cores)
    .venv/bin/python -m benchmarks.run --quick    # smoke run: tiny sizes, same tables
    .venv/bin/python -m benchmarks.run --only fidelity   # the slow end-to-end checks that left `pytest tests`

Each case runs in a fresh process (so its peak resident set is its own); inside a case, ours and the
baseline alternate round-robin and the report gives medians.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ORDER = ["steering", "cfg", "naive", "logprobs", "generate", "load", "arrows", "memory", "training", "engine", "guided", "peer",
         "fidelity"]


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one round: a smoke run")
    ap.add_argument("--tiny", action="store_true", help="use the tiny random model (tests) instead of the real one")
    ap.add_argument("--inprocess", action="store_true", help="run every case in this process (no subprocesses)")
    ap.add_argument("--only", default="", help=f"comma-separated cases out of {','.join(ORDER)}")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (GPU runs load the model in bf16)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: on a shared 2-core machine more threads oversubscribe)")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="where to write the report")
    ap.add_argument("--json", default="", help="also write the raw rows as JSON here")
    ap.add_argument("--arrows-budget", type=float, default=960.0, help="seconds for the arrows section in all")
    ap.add_argument("--note", default="", help="a paragraph to print under the report's header")
    ap.add_argument("--reuse", default="", help="take the cases found in this earlier --json file instead of rerunning them")
    ap.add_argument("--case", default="", help=argparse.SUPPRESS)  # internal: run one case, write --emit
    ap.add_argument("--emit", default="", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def run_case(name: str, args: argparse.Namespace, env: Any = None) -> dict[str, Any]:
    """Run one case here and return {rows, max_rss_mb, seconds} (an error row if it fails)."""
    from .cases import FULL, QUICK, Env
    from .timing import max_rss_mb

    t0 = time.perf_counter()
    env = env or Env(sizes=QUICK if args.quick else FULL, tiny=args.tiny, inprocess=args.inprocess,
                     arrows_budget=args.arrows_budget)
    try:
        rows = _case_fn(name)(env)
    except Exception as exc:  # one broken case must not sink the whole report
        traceback.print_exc()
        rows = [{"section": name, "case": name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}]
    return {"rows": rows, "max_rss_mb": max_rss_mb(), "seconds": round(time.perf_counter() - t0, 1)}


def _case_fn(name: str) -> Any:
    if name == "arrows":
        from .arrows import arrows

        return arrows
    if name == "peer":
        from .peer import peer

        return peer
    if name == "guided":
        from .guided import guided

        return guided
    if name == "fidelity":
        from .fidelity import fidelity

        return fidelity
    from .cases import CASES

    return CASES[name]


def spawn_case(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one case in a fresh interpreter (its own peak RSS) and read back its JSON."""
    with tempfile.TemporaryDirectory(prefix="tnb-bench-") as tmp:
        emit = Path(tmp) / "case.json"
        cmd = [sys.executable, "-m", "benchmarks.run", "--case", name, "--emit", str(emit),
               "--threads", str(args.threads),
               "--arrows-budget", str(args.arrows_budget)] + (["--quick"] if args.quick else []) + (["--tiny"] if args.tiny else [])
        env = {**os.environ, "TRIANGLE_NB_LIVE": "1"}  # benchmarks time live runs, never a baked result
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
        if proc.returncode != 0 or not emit.exists():
            err = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
            return {"rows": [{"section": name, "case": name, "error": err[0][:300]}], "max_rss_mb": None, "seconds": None}
        return json.loads(emit.read_text())


def machine(threads: int) -> dict[str, Any]:
    import platform

    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "cpus": os.cpu_count(), "threads": threads, "cpu": platform.processor() or platform.machine(),
            "load_average": [round(x, 2) for x in os.getloadavg()], "cuda": torch.cuda.is_available(),
            "device": os.environ.get("TRIANGLE_NB_BENCH_DEVICE", "cpu"),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # children inherit it
    os.environ["TRIANGLE_NB_BENCH_DEVICE"] = args.device
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    saved_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        if args.case:
            Path(args.emit).write_text(json.dumps(run_case(args.case, args)))
            return {}
        return _suite(args, sys.argv[1:] if argv is None else argv)
    finally:
        torch.set_num_threads(saved_threads)


def _suite(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    from .report import render

    names = [n for n in ORDER if not args.only or n in args.only.split(",")]
    result: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "quick": args.quick,
                              "tiny": args.tiny, "inprocess": args.inprocess, "machine": machine(args.threads),
                              "command": " ".join(["python -m benchmarks.run", *_shown(argv)]), "note": args.note,
                              "cases": {}}
    source = json.loads(Path(args.reuse).read_text()) if args.reuse else {"cases": {}}
    reused = source["cases"]
    result["reused"] = {n: source["started"] for n in names if n in reused}
    if reused:  # the machine and its load as they were when the reused numbers were measured
        result["machine"], result["reused_finished_load"] = source["machine"], source.get("finished_load_average")
    env = None
    if args.inprocess:
        from .cases import FULL, QUICK, Env

        env = Env(sizes=QUICK if args.quick else FULL, tiny=args.tiny, inprocess=True)
    for name in names:
        print(f"[benchmarks] {name} ...", file=sys.stderr, flush=True)
        if name in reused:
            result["cases"][name] = reused[name]
            continue
        if args.inprocess:
            from triangle_nb.bake import forced_live

            with forced_live():  # live runs, never a baked result
                result["cases"][name] = run_case(name, args, env)
        else:
            result["cases"][name] = spawn_case(name, args)
    result["finished_load_average"] = result.pop("reused_finished_load", None) or [round(x, 2) for x in os.getloadavg()]
    Path(args.out).write_text(render(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"[benchmarks] wrote {args.out}", file=sys.stderr)
    return result


def _shown(argv: list[str]) -> list[str]:
    """The command line without the --note text."""
    out, skip = [], False
    for a in argv:
        if skip or a.startswith("--note="):
            skip = False
            continue
        skip = a == "--note"
        out += [] if skip else [a]
    return out


if __name__ == "__main__":
    main()
