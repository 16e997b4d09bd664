"""Does the BEATs branch carry information? Captioning CIDEr-D with BEATs intact, fed silence, or zeroed.

    python -m demo_factory.train.ablation --model demo --data benchmarks/data/test.json \
        --out benchmarks/results/demo-beats-ablation-test.json

Every variant decodes with the model's own `generate()` and its saved defaults; only the BEATs
branch changes: `silence` feeds BEATs an all-zero waveform of the clip's length (Whisper still
hears the clip), `zero` replaces the BEATs features (after ln_audio) by zeros.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import os
import sys

import torch

from compress.errors import UserError

VARIANTS = ("intact", "silence", "zero")


@contextlib.contextmanager
def beats_variant(model, variant: str):
    """Patch the model's BEATs input or output for the duration of the block."""
    if variant == "intact":
        yield
        return
    if model.beats is None:
        raise UserError("this model has no BEATs branch")
    if variant == "silence":
        orig = model.prepare_audio

        def prepare(waveforms):
            out = orig(waveforms)
            out["wav"] = torch.zeros_like(out["wav"])
            return out

        model.prepare_audio = prepare
        try:
            yield
        finally:
            del model.prepare_audio  # back to the class method
        return
    if variant == "zero":
        handle = model.ln_audio.register_forward_hook(lambda mod, args, out: torch.zeros_like(out))
        try:
            yield
        finally:
            handle.remove()
        return
    raise UserError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")


def run(model, samples: list, variants=VARIANTS, progress: bool = True) -> dict:
    from tqdm import tqdm

    from compress.audio import load_audio
    from compress.metrics import cider_d

    caps = [s for s in samples if s.task == "caption"]
    if not caps:
        raise UserError("no captioning samples in the data")
    waves = [load_audio(s.path) for s in caps]
    refs = [s.references or [s.text] for s in caps]
    out = {}
    for v in variants:
        with beats_variant(model, v):
            hyps = [model.generate([w], "caption")[0].text
                    for w in tqdm(waves, desc=v, disable=not progress, file=sys.stderr)]
        score, per = cider_d(hyps, refs)
        out[v] = {"cider_d": score, "samples": [{"id": s.id, "hypothesis": h, "cider_d": p}
                                                 for s, h, p in zip(caps, hyps, per)]}
    if "intact" in out:  # is each variant's difference from intact beyond clip sampling?
        from compress.metrics.bootstrap import paired_bootstrap
        from compress.metrics.cider import tokenize_caption_sets
        from compress.metrics.ptb import caption_tokenize_batch

        def score(cands, references):
            return cider_d(cands, references, tokenize=False)[0]

        base, toks = tokenize_caption_sets([x["hypothesis"] for x in out["intact"]["samples"]], refs)
        for v in out:
            if v != "intact":
                other = caption_tokenize_batch([x["hypothesis"] for x in out[v]["samples"]])  # refs done once
                out[v]["vs_intact"] = paired_bootstrap(score, base, other, toks)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m demo_factory.train.ablation", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", help="result JSON")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from compress.data.annotations import read_annotations
    from compress.loaders import load_model

    try:
        model = load_model(args.model)
        res = run(model, read_annotations(args.data), [v for v in args.variants.split(",") if v])
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    for v, r in res.items():
        d = r.get("vs_intact")
        vs = (f"  vs intact {d['delta']:+.4f} (95% paired bootstrap over clips {d['low']:+.4f} .. {d['high']:+.4f}; "
              f"lower in {d['share_below']:.1%} of {d['resamples']} resamples)") if d else ""
        print(f"{v:<8} CIDEr-D {r['cider_d']:.4f}{vs}")
    if args.out:
        doc = {"what": "captioning CIDEr-D with the BEATs branch intact / fed silence / zeroed",
               "command": "python -m demo_factory.train.ablation " + " ".join(argv if argv is not None else sys.argv[1:]),
               "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "model": args.model, "data": os.path.abspath(args.data),
               "decoding": dict(vars(model.cfg.generate)), "threads": args.threads, "variants": res}
        from compress.bench.results import write_json

        write_json(doc, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
