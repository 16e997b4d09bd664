"""Where a joint training step's time goes: the audio front alone, the whole step without and with the CTC term
(over every LLM piece, and over the answers' pieces only: `joint_ctc_vocab`).

    python benchmarks/tools/joint_step_split.py --data-dir DATA_DIR [--queries 1,2] [--first-step 200] [--steps 12]

Reuses a training run's data directory (train.json and its feature cache; nothing is built that is not there
already except the model) and times forward + backward, without the optimizer, on the batches the joint stage
draws at those steps, for each query count; prints the median of all but the first --skip steps. The LLM cache is
the one the training used (SALMONN_COMPRESS_CACHE).

With --flops it also prints how close the step without CTC runs to this CPU's matrix throughput: the LLM's
projection FLOPs per step (forward 2 x weights x padded tokens; backward the same again for the input gradients of
the frozen weights, LoRA's own few left out, as are attention's scores over these ~80-token rows) over the time
the LLM takes (step without CTC minus the audio front alone), beside a float32 matmul of the same shape (padded
tokens x hidden @ hidden x intermediate) timed in the same process.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, HERE)


def split(data_dir: str, queries: int, first: int, steps: int, flops: bool = False, compile_llm: bool = False,
          skip: int = 2) -> dict:
    from compress.models.salmonn import answer_ids
    from demo_factory.train import loop as L
    from demo_factory.train import pipeline as P
    from demo_factory.train import settings as S

    ts = S.DemoSettings(queries=queries)
    _, samples = P.stage_data(ts, data_dir, None, False)
    tok, folder = P.stage_llm(ts, False)
    model, _ = P.assemble(ts, S.salmonn_config(ts), tok, folder)
    cache = P.stage_features(ts, model, samples, data_dir, False, lambda m: None)
    L.set_trainable(model)
    if compile_llm:  # the LLM's decoder stack through torch.compile (inductor on CPU), shapes dynamic
        model.llm_base().model.compile(dynamic=True)
    model.train()
    model.speech_encoder.eval()
    targets = [answer_ids(tok, s.text) for s in samples]
    tasks = ["asr" if s.task == "asr" else "caption" for s in samples]
    ctc_on = L.ctc_clips(samples, ts)
    pool = L.epoch_pool(samples, ts.caption_repeat)
    lengths = [L.clip_tokens(model, cache, i) + len(targets[i]) for i in range(len(samples))]
    head = L.CtcHead(model.llama_model.get_input_embeddings().weight)
    vocab = L.answer_vocab(model.llama_model.get_input_embeddings().weight,
                           [targets[i] for i in range(len(samples)) if ctc_on[i]])
    variants = (("step without CTC", 0.0, None), ("step with CTC", ts.ctc_weight, None),
                ("step with CTC on the answers' pieces", ts.ctc_weight, vocab))
    times = {"front": [], **{key: [] for key, _, _ in variants}}
    emb = model.llama_model.get_input_embeddings()
    fixed = {t: model.build_inputs(emb.weight.new_zeros(1, 0, emb.embedding_dim), model.instruction_for(t))[0].shape[1]
             for t in set(tasks)}  # prompt tokens around the speech, per task
    padded = []
    for step in range(first, first + steps):
        idx = L.batch_at(step, pool, ts.batch, ts.seed, lengths, ts.length_buckets)
        padded.append(len(idx) * max(fixed[tasks[i]] + lengths[i] - 1 for i in idx))
        frames = L.keep_frames(model, cache, idx, np.random.default_rng([ts.seed, 11, step]), ts.full_share)
        t = time.perf_counter()
        L.speech_from_features(model, *L.cached_batch(cache, idx, frames)).pow(2).mean().backward()
        times["front"].append(time.perf_counter() - t)
        for key, weight, restrict in variants:
            t = time.perf_counter()
            loss, _ = L.batch_loss(model, cache, idx, [tasks[i] for i in idx], [targets[i] for i in idx],
                                   frames=frames, ctc_head=head, ctc_weight=weight, ctc_on=[ctc_on[i] for i in idx],
                                   ctc_vocab=restrict)
            loss.backward()
            times[key].append(time.perf_counter() - t)
        model.zero_grad(set_to_none=True)
    out = {k: float(np.median(v[skip:] if len(v) > skip else v)) for k, v in times.items()}
    if flops:
        base = model.llm_base()
        weights = sum(m.weight.numel() for n, m in base.model.layers.named_modules()
                      if isinstance(m, torch.nn.Linear) and "lora_" not in n)
        per_step = [4.0 * weights * t for t in padded]
        llm_s = [s - f for s, f in zip(times["step without CTC"], times["front"])]
        rates = [p / s / 1e9 for p, s in zip(per_step, llm_s)]
        out["padded tokens"] = float(np.median(padded))
        out["LLM GFLOP/s"] = float(np.median(rates[skip:] if len(rates) > skip else rates))
        out["matmul GFLOP/s"] = matmul_rate(int(np.median(padded)), base.config.hidden_size,
                                            base.config.intermediate_size)
    return out


def matmul_rate(m: int, k: int, n: int, repeats: int = 30) -> float:
    """float32 GFLOP/s of (m, k) @ (k, n), median of `repeats` after a warm-up."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        a @ b
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t)
    return 2.0 * m * k * n / float(np.median(ts)) / 1e9


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True, help="a training run's --data-dir (train.json + features/)")
    ap.add_argument("--queries", default="1,2", help="comma list of query counts per window (default 1,2)")
    ap.add_argument("--first-step", type=int, default=200)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--flops", action="store_true", help="also the LLM's achieved GFLOP/s beside a matmul probe")
    ap.add_argument("--skip", type=int, default=2, help="first steps left out of the medians (default 2)")
    ap.add_argument("--compile", action="store_true",
                    help="run the LLM's decoder stack through torch.compile (dynamic shapes); the first --skip steps, "
                         "which compile, are left out of the medians")
    args = ap.parse_args(argv)
    if not os.path.isfile(os.path.join(args.data_dir, "train.json")):
        print(f"error: {args.data_dir} has no train.json (give a training run's --data-dir)", file=sys.stderr)
        return 2
    try:
        counts = [int(q) for q in args.queries.split(",")]
    except ValueError:
        print(f"error: --queries must be a comma list of integers, got {args.queries!r}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    for q in counts:
        r = split(args.data_dir, q, args.first_step, args.steps, args.flops, args.compile, args.skip)
        print(f"queries={q}: " + ", ".join(f"{k} {v:.2f}" + ("" if "GFLOP" in k or "tokens" in k else " s")
                                          for k, v in r.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
