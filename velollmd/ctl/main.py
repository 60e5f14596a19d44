"""`velollmctl`: detect hardware, tune Ollama / llama.cpp, benchmark, status.

One argparse subparser per verb; each verb is one `cmd_*` function returning an exit code.
`bench` lives in bench/cli.py, `status` in status.py.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..engine.device import choose_device
from ..hw import probe
from ..hw.run import DEFAULT_TIMEOUT_S
from . import llamacpp_cmd, modelspec, report, settings, tune
from .bench.cli import add_bench_arguments, positive_int, positive_seconds
from .gguf_header import GGUFError
from .reload import add_reload_arguments
from .remote import OLLAMA_URL
from .status import add_status_arguments


def cmd_detect(args) -> int:
    hw = probe.detect(timeout_s=args.timeout)
    engine = choose_device("auto")           # what `device = "auto"` would compute on, and why
    if args.json:
        print(json.dumps({**hw.to_dict(), "engine_device": engine.to_dict()}, indent=2))
    else:
        sys.stdout.write(report.format_hardware(hw))
        print(f"engine device (auto): {engine.used} ({engine.reason})")
    return 0


def load_model(args) -> modelspec.ModelSpec:
    """From --gguf, --ollama-model or --model-size (raises ValueError/OSError/GGUFError)."""
    if args.gguf:
        return modelspec.from_gguf(args.gguf)
    if args.ollama_model:
        show = modelspec.fetch_ollama_show(args.ollama_url, args.ollama_model, args.timeout)
        return modelspec.from_ollama_show(show, args.ollama_model)
    return modelspec.from_size(args.model_size, args.quant)


def _draft(args, p: tune.TunePlan):
    paths = list(args.draft_candidates or [])
    if args.models_dir:
        paths += llamacpp_cmd.scan_gguf_files(args.models_dir)
    candidates, notes = llamacpp_cmd.load_candidates(paths)
    return llamacpp_cmd.choose_draft(p, candidates), notes


def cmd_optimize(args) -> int:
    if args.dry_run and (args.write_systemd or args.write_env):
        print("velollmctl optimize: --dry-run contradicts --write-systemd / --write-env "
              "(showing the diff is the default; a --write-* option writes)", file=sys.stderr)
        return 2
    try:
        model = load_model(args)
    except (ValueError, OSError, GGUFError) as exc:
        print(f"velollmctl optimize: cannot read the model: {exc}", file=sys.stderr)
        return 2
    hw = probe.detect(timeout_s=args.timeout)
    p = tune.plan(hw, model, args.context, args.vram_mib)
    recs = tune.recommendations(hw, p)
    current = settings.read_current(dict(os.environ), args.dropin_dir)
    if args.json:
        print(json.dumps(_json_result(hw, p, recs, current), indent=2))
        return _write_outputs(args, model, hw, recs, out=sys.stderr)
    print(report.format_plan(p, hw.notes))
    print(report.format_diff(tune.diff(recs, current), written=bool(args.write_systemd or args.write_env)))
    print(report.format_request_options(recs))
    if args.llamacpp:
        draft, notes = _draft(args, p)
        argv = llamacpp_cmd.llama_server_argv(p, model.path or "MODEL.gguf", draft)
        print("llama.cpp server:\n  " + llamacpp_cmd.format_command(argv))
        print("\n".join(f"  # {line}" for line in llamacpp_cmd.explain(p, draft) + notes) + "\n")
    return _write_outputs(args, model, hw, recs)


def _write_outputs(args, model, hw, recs, out=None) -> int:
    """The files asked for with --write-systemd / --write-env (none: nothing is written)."""
    out = out or sys.stdout
    env = tune.env_values(recs)
    header = (f"Written by velollmctl optimize for {model.name} on "
              f"{', '.join(g.name for g in hw.gpus) or hw.cpu.model}.")
    try:
        if args.write_systemd:
            path = Path(args.write_systemd) / settings.DROPIN_NAME
            _wrote(path, settings.write_atomic(path, settings.render_dropin(env, header)), out)
            print("apply with: sudo systemctl daemon-reload && sudo systemctl restart ollama", file=out)
        if args.write_env:
            text = settings.render_env_file(env, header)
            _wrote(args.write_env, settings.write_atomic(args.write_env, text), out)
    except OSError as exc:
        print(f"velollmctl optimize: cannot write: {exc}", file=sys.stderr)
        return 1
    return 0


def _wrote(path, backup, out) -> None:
    print(f"wrote {path}" + (f" (previous file kept as {backup})" if backup else ""), file=out)


def _json_result(hw, p, recs, current) -> dict:
    return {"hardware": hw.to_dict(),
            "plan": {"model": p.model.name, "weights_mib": p.model.weights_mib,
                     "budget_mib": p.budget.mib, "device": p.budget.device,
                     "context": p.context, "parallel": p.parallel, "cache_type": p.cache_type,
                     "kv_cache_mib": p.kv_mib, "headroom_mib": p.headroom_mib,
                     "num_gpu_layers": p.num_gpu_layers, "notes": list(p.notes)},
            "recommendations": [{"key": r.key, "value": r.value, "reason": r.reason, "scope": r.scope,
                                 "current": current[r.key].value if r.key in current else None}
                                for r in recs]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="velollmctl", description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=positive_seconds, default=DEFAULT_TIMEOUT_S,
                        help="seconds allowed to each hardware probe tool (default 5)")
    sub = parser.add_subparsers(dest="command", required=True)
    detect = _verb(sub, "detect", "show GPUs, CPU, memory and OS, and the device the engine would use")
    detect.add_argument("--json", action="store_true", help="machine-readable output")
    detect.set_defaults(func=cmd_detect)
    _add_optimize(_verb(sub, "optimize", "recommend Ollama / llama.cpp settings for a model on this machine "
                                          "(shows the diff; --write-systemd / --write-env write it)"))
    add_bench_arguments(_verb(sub, "bench", "benchmark the daemon or any OpenAI / Ollama endpoint"))
    add_status_arguments(_verb(sub, "status", "show the daemon's health, backends, cache, queue and metric totals"))
    add_reload_arguments(_verb(sub, "reload", "make the running daemon re-read its config file (SIGHUP)"))
    return parser


def _verb(sub, name: str, summary: str) -> argparse.ArgumentParser:
    """A subcommand whose own --help opens with the line the command list shows."""
    return sub.add_parser(name, help=summary, description=summary)


def _add_optimize(opt: argparse.ArgumentParser) -> None:
    model = opt.add_mutually_exclusive_group()
    model.add_argument("--model-size", default="8B", help="parameter count, e.g. 8B or 500M (default 8B)")
    model.add_argument("--gguf", metavar="PATH", help="read the model's shape from a GGUF file")
    model.add_argument("--ollama-model", metavar="NAME", help="ask Ollama's /api/show about NAME")
    opt.add_argument("--quant", default=modelspec.DEFAULT_QUANT, help="with --model-size (default Q4_K_M)")
    opt.add_argument("--ollama-url", default=OLLAMA_URL, help=f"with --ollama-model (default {OLLAMA_URL})")
    opt.add_argument("--context", type=positive_int, default=tune.DEFAULT_CONTEXT,
                     help=f"wanted context per request (default {tune.DEFAULT_CONTEXT})")
    opt.add_argument("--vram-mib", type=positive_int, help="override the detected free GPU memory (e.g. a MIG slice)")
    opt.add_argument("--dropin-dir", default=settings.DROPIN_DIR,
                     help=f"where Ollama's current drop-ins are read (default {settings.DROPIN_DIR})")
    opt.add_argument("--dry-run", action="store_true",
                     help="show the diff and write nothing (the default without --write-*)")
    opt.add_argument("--write-systemd", nargs="?", const=settings.DROPIN_DIR, metavar="DIR",
                     help=f"write DIR/{settings.DROPIN_NAME} (default DIR {settings.DROPIN_DIR})")
    opt.add_argument("--write-env", metavar="FILE", help="write a shell file of `export` lines")
    opt.add_argument("--llamacpp", action="store_true", help="print a tuned llama-server command")
    opt.add_argument("--draft-candidates", nargs="+", metavar="PATH",
                     help="with --llamacpp: GGUF files that may serve as the speculative draft model")
    opt.add_argument("--models-dir", metavar="DIR", help="scan DIR for GGUF draft candidates")
    opt.add_argument("--json", action="store_true", help="machine-readable output")
    opt.set_defaults(func=cmd_optimize)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:            # `velollmctl ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # for the exit-time flush
        return 1


if __name__ == "__main__":
    sys.exit(main())
