"""The `salmonn-compress` command line: user errors are printed without a traceback and exit with code 2."""

from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import UserError

# Exit codes: 0 done; 2 bad input, refused before any work (nothing written or deleted); 3 done, but some clips
# failed (outputs written, failures counted in them); 130 interrupted.
EXIT_PARTIAL = 3


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: same exit code as ours
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _at_least(lo: int):
    """argparse type: a whole number >= lo (a clear message instead of a silent default or a traceback)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {lo}, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v

    parse.__name__ = f"integer >= {lo}"
    return parse


POS = _at_least(1)
NONNEG = _at_least(0)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from .loaders import SPEC_HELP

    p.add_argument("--model", required=True, help=f"model SPEC: {SPEC_HELP}")
    p.add_argument("--dtype", default=None, help="cast the model to float32 / float16 / bfloat16")
    p.add_argument("--allow-unsafe-pickle", action="store_true",
                   help="allow checkpoints that need arbitrary unpickling (can run code; only for files you trust)")
    p.add_argument("--qformer-config", default=None,
                   help="a bert-base-uncased style directory or config.json for the Q-Former settings")
    p.add_argument("--seed", type=int, default=0, help="seed for presets' random weights")


def _load(args):
    from .loaders import load_model

    return load_model(args.model, allow_unsafe_pickle=args.allow_unsafe_pickle, dtype=args.dtype,
                      qformer_config=args.qformer_config, seed=args.seed, device=getattr(args, "device", None))


def _device(text: str) -> str:
    """argparse type: a device this machine has (loaders.spec.parse_device), checked before any work."""
    from .loaders.spec import parse_device

    try:
        parse_device(text)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", type=_device, default=None,
                   help="run a PyTorch model on cpu (default), cuda or cuda:N; timings then use CUDA events and "
                        "peak memory adds torch.cuda.max_memory_allocated")


def cmd_inspect(args) -> int:
    from .inspect_model import inspect_table, part_stats

    model = _load(args)
    if args.json:
        print(json.dumps({"parts": part_stats(model), "load_report": getattr(model, "load_report", {})},
                         indent=1, default=str))
    else:
        print(f"model: {args.model}")
        print(inspect_table(model))
    return 0


def cmd_generate(args) -> int:
    import torch

    from .audio import load_audio
    from .errors import AudioError

    torch.set_num_threads(args.threads) if args.threads else None
    waves, names, failed = [], [], 0
    for path in args.audio:  # a bad file is reported and skipped; the rest still run
        try:
            waves.append(load_audio(path, too_long=args.too_long))
            names.append(path)
        except AudioError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
    if not waves:
        raise UserError("no usable audio input")
    model = _load(args)
    outs = model.generate(waves, args.task, instruction=args.prompt, num_beams=args.beams,
                          max_new_tokens=args.max_new_tokens)
    for name, o in zip(names, outs):
        print(json.dumps({"audio": name, "task": args.task, "text": o.text}) if args.json else f"{name}\t{o.text}")
    if failed:
        print(f"error: {failed} of {len(args.audio)} audio files failed; exit {EXIT_PARTIAL}", file=sys.stderr)
        return EXIT_PARTIAL
    return 0


def cmd_bench(args) -> int:
    from tqdm import tqdm

    from .bench.harness import BenchSettings, run_benchmark
    from .bench.results import markdown_table, summary_row, write_json

    if os.path.isdir(args.out):  # checked before the work, not after it
        raise UserError(f"--out {args.out!r} is a directory; bench writes one result JSON file: name a file")
    parent = os.path.dirname(os.path.abspath(args.out))
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise UserError(f"--out {args.out!r}: {parent!r} is not a directory")
    settings = BenchSettings(
        tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()), num_beams=args.beams,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, limit=args.limit,
        latency_tokens=args.latency_tokens, latency_warmup=args.warmup, latency_repeats=args.repeats,
        threads=args.threads, memory=not args.no_memory, corenlp_dir=args.corenlp_dir, hackathon=args.hackathon,
        dtype=args.dtype)
    result = run_benchmark(
        args.model, args.data, settings,
        model_kwargs={"allow_unsafe_pickle": args.allow_unsafe_pickle, "qformer_config": args.qformer_config,
                      "seed": args.seed, "device": args.device},
        progress_factory=lambda n: tqdm(total=n, desc="accuracy", unit="clip", file=sys.stderr))
    write_json(result, args.out)
    result["_path"] = args.out
    print(markdown_table([summary_row(result)]))
    for task, t in result["tasks"].items():
        for name, why in t["unavailable"].items():
            print(f"{task}: {name} unavailable: {why}")
    if args.hackathon:
        from .bench.hackathon import validate_submission, write_submission

        sub = args.out.rsplit(".", 1)[0] + ".submission.csv"
        write_submission(result["samples"], sub)
        problems = validate_submission(sub, [r.get("extra", {}).get("testset_id", r["id"]) for r in result["samples"]])
        print(f"hackathon submission: {sub} ({'valid' if not problems else '; '.join(problems)})")
    failed = result["summary"]["failures"]
    print(f"result written to {args.out}; failures: {failed} of {result['summary']['samples']}")
    if failed:
        print(f"error: {failed} of {result['summary']['samples']} clips failed (see the result's samples); exit "
              f"{EXIT_PARTIAL}", file=sys.stderr)
        return EXIT_PARTIAL
    return 0


def cmd_table(args) -> int:
    from .bench.results import csv_table, load_result, markdown_table, pareto_plot, summary_row

    results = [load_result(p) for p in args.results]
    rows = [summary_row(r) for r in results]
    md = markdown_table(rows)
    print(md)
    if args.md:
        open(args.md, "w").write(md)
    if args.csv:
        open(args.csv, "w").write(csv_table(rows))
    if args.plot:
        pareto_plot(results, args.plot)
        print(f"Pareto plot written to {args.plot}")
    return 0


def cmd_diff(args) -> int:
    from .bench.results import diff, diff_text, load_result, write_json

    d = diff(load_result(args.baseline), load_result(args.other), top=args.top)
    print(diff_text(d))
    if args.out:
        write_json(d, args.out)
    return 0


def cmd_run(args) -> int:
    from .recipe import load_recipe

    recipe = load_recipe(args.recipe)  # validated completely (torch not yet imported) before any model is loaded
    for line in recipe.defaulted():
        print(f"note: default used: {line}", file=sys.stderr)
    from .runner import run_recipe

    run_recipe(recipe, args.model, args.out, overwrite=args.overwrite, bench=not args.no_bench, storage=args.storage,
               weights_dtype=args.save_dtype, device=args.device,
               model_kwargs={"allow_unsafe_pickle": args.allow_unsafe_pickle, "dtype": args.dtype,
                             "qformer_config": args.qformer_config, "seed": args.seed})
    return 0


def cmd_export(args) -> int:
    from .export import export_model
    from .export.options import ExportOptions

    options = ExportOptions.build(  # every option checked before the model loads
        "export", format=args.format, int8=args.int8, int8_float=args.int8_float, int8_front=args.int8_front,
        nbits_accuracy_level=args.nbits_accuracy_level, nbits_float=args.nbits_float,
        prefill_accuracy_level=args.prefill_accuracy_level,
        llm_graph=args.llm_graph, lm_head_bits=args.lm_head_bits,
        lm_head_block=args.lm_head_block, opset=args.opset)
    if args.format == "tensorrt":  # fail before loading the model when TensorRT cannot run here
        from .export.tensorrt import require_tensorrt

        require_tensorrt()
    if args.check and args.format != "onnx":
        raise UserError("--check (the ONNX Runtime parity check) applies to --format onnx only")
    if args.check and not os.path.isfile(args.check):
        raise UserError(f"--check {args.check!r}: no such annotation file")
    from .outputs import check_output
    from .runner import source_info

    check_output(args.out, args.overwrite)  # before the export: --overwrite replaces only this tool's outputs

    model = _load(args)
    check = None if not args.check else {"data": args.check, "limit": args.check_limit,
                                         "max_new_tokens": args.check_tokens}
    log = (lambda *a: print(*a, file=sys.stderr))
    out = export_model(model, args.out, options, overwrite=args.overwrite, check=check, log=log,
                       manifest_extra={"source": source_info(args.model, model),
                                       "created_by": "salmonn-compress export"})
    print(f"{args.format} export written to {out}")
    if check is not None:
        with open(os.path.join(out, "manifest.json")) as f:
            res = json.load(f)["check"]
        print(f"parity (greedy, {res['max_new_tokens']} tokens): {res['identical']} of {res['clips']} clips give "
              f"identical token ids; speech embeddings max |diff| {res['speech_embeds_max_abs_diff']:.3g}")
        for d in res["differences"]:
            print(f"  differs: {d['id']} ({d['task']}) from token {d['first_mismatch']}: "
                  f"torch {d['torch'][:12]} onnx {d['onnx'][:12]}")
        for e in res["errors"]:
            print(f"  error: {e['id']}: {e['error']}")
    return 0


def cmd_demo(args) -> int:
    from .bench.harness import BenchSettings
    from .demo import run_demo

    settings = BenchSettings(tasks=tuple(args.tasks.split(",")), num_beams=args.beams,
                             max_new_tokens=args.max_new_tokens, limit=args.limit,
                             latency_tokens=args.latency_tokens, latency_warmup=1, latency_repeats=args.repeats,
                             threads=args.threads)
    run_demo(args.model, args.data, [r for r in args.recipes.split(",") if r], args.out, settings)
    return 0


def cmd_set_decoding(args) -> int:
    from .loaders.artifact import set_generate

    updates = {}
    for item in args.set:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise UserError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            updates[k] = json.loads(v)
        except json.JSONDecodeError:
            raise UserError(f"--set {k}: {v!r} is not a number or true/false") from None
    if not os.path.isdir(args.artifact):
        raise UserError(f"{args.artifact!r} is not an artifact directory")
    after = set_generate(args.artifact, updates, args.note)
    print(json.dumps(after))
    return 0


def cmd_recipes(args) -> int:
    from .recipe import load_recipe, shipped_recipes

    for path in shipped_recipes():
        r = load_recipe(path)
        steps = " -> ".join(c.type for c in r.steps)
        print(f"{os.path.relpath(path):40s} {r.name:24s} [{steps}] {r.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog="salmonn-compress", description="Compression workbench for SALMONN-family audio LLMs.")
    p.add_argument("--version", action="version", version=f"salmonn-compress {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    s = sub.add_parser("inspect", help="per-part parameters, dtype, bytes, sparsity and weight source")
    _add_model_args(s)
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(fn=cmd_inspect)

    s = sub.add_parser("generate", help="transcribe or caption audio files")
    _add_model_args(s)
    _add_device_arg(s)
    s.add_argument("--audio", nargs="+", required=True, help="audio file(s) (wav, flac, ...)")
    s.add_argument("--task", choices=["asr", "caption"], default="asr")
    s.add_argument("--prompt", default=None, help="override the task's instruction text")
    s.add_argument("--beams", type=POS, default=None, help="beam width (default: the model's generate config)")
    s.add_argument("--max-new-tokens", type=POS, default=None)
    s.add_argument("--too-long", choices=["error", "cut"], default="error",
                   help="what to do with audio longer than 30 s")
    s.add_argument("--threads", type=POS, default=None, help="CPU threads (torch.set_num_threads)")
    s.add_argument("--json", action="store_true", help="one JSON object per clip")
    s.set_defaults(fn=cmd_generate)

    s = sub.add_parser("bench", help="accuracy, latency, peak memory and the decode bound on an annotation file")
    _add_model_args(s)
    _add_device_arg(s)
    s.add_argument("--data", required=True, help="annotation JSON (SALMONN or hackathon format)")
    s.add_argument("--tasks", default="asr,caption", help="comma-separated: asr, caption")
    s.add_argument("--out", required=True, help="result JSON to write")
    s.add_argument("--beams", type=POS, default=None)
    s.add_argument("--max-new-tokens", type=POS, default=None)
    s.add_argument("--batch-size", type=POS, default=1)
    s.add_argument("--limit", type=POS, default=None, help="first N samples per task")
    s.add_argument("--latency-tokens", type=POS, default=32, help="fixed generated length for TTFT/TPOT")
    s.add_argument("--warmup", type=NONNEG, default=2)
    s.add_argument("--repeats", type=POS, default=5)
    s.add_argument("--threads", type=POS, default=None, help="CPU threads, recorded in the result")
    s.add_argument("--no-memory", action="store_true", help="skip the clean-process peak-memory run")
    s.add_argument("--corenlp-dir", default=None,
                   help="Stanford CoreNLP 3.6.0 jars for SPICE/SPIDEr (or SALMONN_COMPRESS_CORENLP_DIR)")
    s.add_argument("--hackathon", action="store_true",
                   help="also report the hackathon evaluator's definitions, labelled, and write its CSV")
    s.set_defaults(fn=cmd_bench)

    s = sub.add_parser("run", help="apply a recipe to a model and write the compressed artifact")
    s.add_argument("recipe", help="recipe YAML (see `salmonn-compress recipes`)")
    _add_model_args(s)
    _add_device_arg(s)
    s.add_argument("--out", required=True, help="artifact directory to write (atomically)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing artifact at --out")
    s.add_argument("--no-bench", action="store_true", help="skip the recipe's benchmark section")
    s.add_argument("--storage", choices=["sparse", "dense"], default="sparse",
                   help="sparse: pruned matrices stored as bitmask + non-zeros when smaller (default); dense: as is")
    s.add_argument("--save-dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto",
                   help="dtype of the stored floating weights (2+ dims; quantized modules keep theirs); auto "
                        "(default): the source artifact's stored dtype (the demo: float16), or the in-memory dtype "
                        "for presets and when --dtype is given")
    s.set_defaults(fn=cmd_run)

    from .export import FORMATS

    s = sub.add_parser("export", help="export to ONNX (run by ONNX Runtime; `bench` takes the directory) or TensorRT")
    _add_model_args(s)
    s.add_argument("--format", required=True, choices=FORMATS, help="onnx, or tensorrt (NVIDIA GPU + torch-tensorrt)")
    s.add_argument("--out", required=True, help="directory to write (atomically, manifest last)")
    s.add_argument("--int8", action="store_true",
                   help="onnx: dynamic int8 quantization of the LLM graph (onnxruntime quantize_dynamic)")
    s.add_argument("--int8-front", action="store_true",
                   help="onnx: dynamic int8 of the audio front graph's MatMuls (Whisper, BEATs, Q-Former; weights "
                        "per output channel); independent of the LLM's format")
    s.add_argument("--int8-float", action="append", choices=["down_proj"], default=[], metavar="PART",
                   help="with --int8: leave these LLM parts float (down_proj: the MLP down projections, whose "
                        "inputs hold the activation outliers per-tensor int8 loses); repeatable")
    s.add_argument("--nbits-accuracy-level", type=int, choices=range(5), default=0, metavar="{0..4}",
                   help="onnx, GPTQ / RTN models (exported as MatMulNBits): ONNX Runtime's compute mode; 0 (default) "
                        "float activations, 4 int8 activations (fastest on CPU, approximate)")
    s.add_argument("--nbits-float", action="append", default=[], metavar="PROJ",
                   choices=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                   help="with --nbits-accuracy-level: these LLM projections keep float activations (down_proj: "
                        "the inputs with the activation outliers); repeatable")
    s.add_argument("--prefill-accuracy-level", type=int, choices=range(5), default=None, metavar="{0..4}",
                   help="onnx, GPTQ / RTN models: also write a prefill graph (same weights, stored once) whose "
                        "MatMulNBits use this compute mode for the prompt (4: int8 activations, the fast prefill); "
                        "decode steps keep --nbits-accuracy-level")
    s.add_argument("--llm-graph", choices=("dynamo", "genai"), default="dynamo",
                   help="onnx: who writes the LLM decoder graph: dynamo (torch.onnx, default) or genai "
                        "(onnxruntime-genai's model builder: fused attention and norms, fewer nodes per token; "
                        "unpadded batches only)")
    s.add_argument("--lm-head-bits", type=int, choices=(4, 8), default=None,
                   help="onnx, --llm-graph genai: the output layer as MatMulNBits at 4 or 8 bits (ONNX Runtime's "
                        "round-to-nearest quantizer; default: float32)")
    s.add_argument("--lm-head-block", type=int, choices=(32, 64, 128), default=None,
                   help="with --lm-head-bits: input columns per scale of the output layer (default 32)")
    s.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing directory at --out")
    s.add_argument("--check", default=None, metavar="DATA",
                   help="annotation file: compare PyTorch and ONNX Runtime greedy token ids on its clips "
                        "(result stored in the manifest)")
    s.add_argument("--check-limit", type=POS, default=4, help="clips per task for --check (default 4)")
    s.add_argument("--check-tokens", type=POS, default=32, help="max new tokens per clip for --check (default 32)")
    s.set_defaults(fn=cmd_export)

    from .demo import DEFAULT_RECIPES

    s = sub.add_parser("demo", help="baseline + a default set of recipes, compared (the README's main job)")
    s.add_argument("--model", default="demo", help="model SPEC (default: the shipped trained demo model)")
    s.add_argument("--data", default=os.path.join("benchmarks", "data", "dev.json"))
    s.add_argument("--recipes", default=",".join(DEFAULT_RECIPES), help="comma-separated recipe names or files")
    s.add_argument("--out", default=os.path.join("out", "demo"))
    s.add_argument("--tasks", default="asr,caption")
    s.add_argument("--limit", type=POS, default=None, help="first N samples per task")
    s.add_argument("--beams", type=POS, default=None)
    s.add_argument("--max-new-tokens", type=POS, default=None)
    s.add_argument("--latency-tokens", type=POS, default=16)
    s.add_argument("--repeats", type=POS, default=3)
    s.add_argument("--threads", type=POS, default=None)
    s.set_defaults(fn=cmd_demo)

    s = sub.add_parser("set-decoding", help="change an artifact's default decoding settings (weights untouched)")
    s.add_argument("artifact", help="artifact directory (rewritten atomically; the change is logged in its manifest)")
    s.add_argument("--set", action="append", required=True, metavar="KEY=VALUE",
                   help="num_beams, max_new_tokens, min_length, repetition_penalty or length_penalty")
    s.add_argument("--note", default="", help="why (kept in the manifest's decoding_changes)")
    s.set_defaults(fn=cmd_set_decoding)

    s = sub.add_parser("recipes", help="list the shipped recipes")
    s.set_defaults(fn=cmd_recipes)

    s = sub.add_parser("table", help="Markdown/CSV tables and a Pareto plot from result files")
    s.add_argument("results", nargs="+")
    s.add_argument("--md", default=None)
    s.add_argument("--csv", default=None)
    s.add_argument("--plot", default=None, help="PNG path for the Pareto plot")
    s.set_defaults(fn=cmd_table)

    s = sub.add_parser("diff", help="compare a result against a baseline result")
    s.add_argument("baseline")
    s.add_argument("other")
    s.add_argument("--top", type=POS, default=5, help="how many most-changed samples to show")
    s.add_argument("--out", default=None, help="also write the diff as JSON")
    s.set_defaults(fn=cmd_diff)
    return p


def quiet_third_party_logs() -> None:
    """peft imports bitsandbytes and torchao when installed; their optional-kernel probes are not user news."""
    import logging

    for name in ("torchao", "bitsandbytes", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


MAX_ERROR_CHARS = 2000


def one_screen(text: str) -> str:
    """An error message cut to one screen (a value quoted from a hostile input can be megabytes long)."""
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + f" ... ({len(text)} characters, cut)"


def _show_notes() -> None:
    """Audio conversions and cuts print as one `note:` line each on stderr (other warnings as Python shows them)."""
    import warnings

    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if category.__name__ in ("AudioConvertedWarning", "AudioCutWarning"):
            print(f"note: {message}", file=sys.stderr)
        else:
            original(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def main(argv=None) -> int:
    import warnings

    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    _show_notes()
    quiet_third_party_logs()
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except UserError as e:
        print(f"error: {one_screen(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
