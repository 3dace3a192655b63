"""Does a placement's model use long context? Evaluate it with the recurrent state reset every k tokens.

    python -m zr_ablate.probe SWEEP_DIR [--out DIR] [--k 1 2 5 10 20 50 100 200] [--splits test valid]

Zaremba et al. argue that dropout on the recurrent connections breaks what an LSTM carries across steps.
Final perplexity cannot show that; this can. For every completed job under SWEEP_DIR with a checkpoint:
- reset-every-k perplexity: the split's stream (N tokens, N-1 predictions) is cut into k-prediction
  chunks, each starting from the zero state, so no prediction sees more than k tokens of context. The
  chunks run as one batch [k, chunks] (in groups of --max-tokens), not token by token. "whole" is one
  chunk, the state carried over the whole stream: the paper's test protocol, so it equals test_ppl.
- memory gain = ppl(k=1) - ppl(whole), and k90, the smallest k that earns 90% of it;
- the loss at each position 1..K inside a chunk (K the largest finite k): how fast the prediction
  improves as context accumulates.
Dropout is off (model.eval()), as in standard evaluation; zoneout uses its evaluation expectation.
Writes OUT (default SWEEP_DIR/probe): probe.csv (ppl per job, split, k), memory.csv (gain and k90 per job
and split), positions.csv (mean NLL per position per job and split).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from zr_ablate.experiment import build
from zr_ablate.model.language_model import LSTMLanguageModel
from zr_ablate.records import COMPLETED, LAST_CHECKPOINT, RecordError, is_job_folder, read_result

KS = [1, 2, 5, 10, 20, 50, 100, 200]
WHOLE = "whole"


# --- the measurement ------------------------------------------------------------------------------------
@torch.no_grad()
def chunked_nll(model: LSTMLanguageModel, stream: torch.Tensor, k: int, max_tokens: int = 8192):
    """stream [N] -> (NLL summed per position [k], predictions per position [k]) with the state reset to
    zero every k predictions. Chunk j predicts stream[j*k+1 .. j*k+k] from stream[j*k .. j*k+k-1]."""
    inputs, targets = stream[:-1], stream[1:]
    chunks = math.ceil(inputs.numel() / k)
    pad = chunks * k - inputs.numel()
    x = F.pad(inputs, (0, pad)).view(chunks, k)  # [C, k]; the last chunk padded
    y = F.pad(targets, (0, pad)).view(chunks, k)
    valid = F.pad(torch.ones_like(targets, dtype=torch.bool), (0, pad)).view(chunks, k)
    nll_sum = torch.zeros(k, dtype=torch.float64, device=stream.device)
    count = torch.zeros(k, dtype=torch.long, device=stream.device)
    group = max(1, max_tokens // k)
    for s in range(0, chunks, group):
        xs, ys, vs = x[s : s + group].t(), y[s : s + group].t(), valid[s : s + group].t()  # [k, G]
        logits, _ = model(xs, model.init_state(xs.size(1)))  # zero state for every chunk
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), ys.reshape(-1), reduction="none").view_as(ys)
        nll_sum += (nll * vs).sum(1).double()
        count += vs.sum(1)
    return nll_sum, count


@torch.no_grad()
def whole_nll(model: LSTMLanguageModel, stream: torch.Tensor, window: int = 500) -> tuple[float, int]:
    """NLL summed over the stream with batch 1 and the state carried throughout (the paper's test
    protocol). With dropout off the LSTM is causal, so any window length gives the same numbers."""
    state, total = model.init_state(1), 0.0
    for s in range(0, stream.numel() - 1, window):
        x, y = stream[s : s + window], stream[s + 1 : s + window + 1]
        x = x[: y.numel()]
        logits, state = model(x[:, None], state)  # [T, 1, V]
        total += F.cross_entropy(logits[:, 0], y, reduction="sum").item()
    return total, stream.numel() - 1


def k90(ppl_by_k: dict, gain: float):
    """The smallest k whose reduction of ppl(k=1) reaches 90% of the memory gain ("whole" if none does)."""
    base = ppl_by_k[1]
    for k in [k for k in ppl_by_k if k != WHOLE]:
        if base - ppl_by_k[k] >= 0.9 * gain:
            return k
    return WHOLE


def probe_model(model: LSTMLanguageModel, stream: torch.Tensor, ks: list[int], max_tokens: int) -> tuple[dict, list]:
    """-> ({k: ppl} with "whole" last, [mean NLL at positions 1..max(ks)])."""
    ppl, positions = {}, []
    for k in ks:
        nll, count = chunked_nll(model, stream, k, max_tokens)
        ppl[k] = math.exp(nll.sum().item() / count.sum().item())
        if k == max(ks):
            positions = (nll / count.clamp(min=1)).tolist()
    total, n = whole_nll(model, stream)
    ppl[WHOLE] = math.exp(total / n)
    return ppl, positions


# --- jobs -----------------------------------------------------------------------------------------------
def job_config(job: Path, data_dir: str | None):
    """The job's composed config (.hydra/config.yaml) under today's schema (build.saved_config); data_dir
    replaces data.dir (the folder the job was trained with may be elsewhere now)."""
    cfg = build.saved_config(OmegaConf.load(job / ".hydra" / "config.yaml"))
    if data_dir:
        cfg.data.dir = data_dir
    return cfg


def load_model(cfg, checkpoint: Path, vocab_size: int, device: torch.device) -> LSTMLanguageModel:
    model = build.model(cfg, vocab_size)
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    return model.to(device).eval()


def jobs_of(sweep: Path) -> list[Path]:
    """Completed jobs with a checkpoint, in name order."""
    return [
        job
        for job in sorted(sweep.iterdir())
        if is_job_folder(job) and _completed(job) and (job / LAST_CHECKPOINT).is_file()
    ]


def _completed(job: Path) -> bool:
    """Whether the job's record says completed; a record that cannot be used is passed over, with a warning."""
    try:
        return (read_result(job) or {}).get("status") == COMPLETED
    except RecordError as e:
        print(f"warning: {e}", file=sys.stderr)
        return False


def run(
    sweep: Path,
    out: Path,
    ks: list[int],
    splits: list[str],
    data_dir: str | None,
    device: torch.device,
    max_tokens: int,
) -> dict[str, pd.DataFrame]:
    rows, memory, positions, data = [], [], [], {}
    for job in jobs_of(sweep):
        cfg = job_config(job, data_dir)
        key = (cfg.data.dir, cfg.data.eval_tokens)
        if key not in data:  # jobs of a sweep share their data: read and encode it once
            data[key] = build.datamodule(cfg)
            data[key].setup()
        dm = data[key]
        model = load_model(cfg, job / LAST_CHECKPOINT, len(dm.vocab), device)
        who = {"job": job.name, "placement": cfg.dropout.name, "size": cfg.model.name, "seed": cfg.seed}
        for split in splits:
            ppl, pos = probe_model(model, dm.tokens[split].to(device), ks, max_tokens)
            rows += [{**who, "split": split, "k": str(k), "ppl": v} for k, v in ppl.items()]
            gain = ppl[1] - ppl[WHOLE]
            memory.append(
                {
                    **who,
                    "split": split,
                    "ppl_k1": ppl[1],
                    "ppl_whole": ppl[WHOLE],
                    "memory_gain": gain,
                    "k90": str(k90(ppl, gain)),
                }
            )
            positions += [{**who, "split": split, "position": i + 1, "nll": v} for i, v in enumerate(pos)]
        print(
            f"probe {job.name}: "
            + ", ".join(f"{m['split']} gain {m['memory_gain']:.1f} (k90 {m['k90']})" for m in memory[-len(splits) :]),
            flush=True,
        )
    frames = {"probe": pd.DataFrame(rows), "memory": pd.DataFrame(memory), "positions": pd.DataFrame(positions)}
    out.mkdir(parents=True, exist_ok=True)
    for name, df in frames.items():
        df.to_csv(out / f"{name}.csv", index=False)
    return frames


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m zr_ablate.probe", description=__doc__.split("\n")[0])
    p.add_argument("sweep", type=Path, help="a sweep folder written by run.py -m (job folders with checkpoints)")
    p.add_argument("--out", type=Path, default=None, help="default: SWEEP/probe")
    p.add_argument("--k", nargs="+", type=int, default=KS, help="reset intervals (the whole stream is always added)")
    p.add_argument("--splits", nargs="+", choices=["test", "valid"], default=["test", "valid"])
    p.add_argument("--data-dir", default=None, help="PTB folder, if not where the jobs were trained from")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--max-tokens", type=int, default=8192, help="tokens per batched forward (memory)")
    args = p.parse_args(argv)
    if any(k < 1 for k in args.k) or 1 not in args.k:
        p.error("--k: intervals must be >= 1 and include 1 (the memory gain is measured from k=1)")
    if not args.sweep.is_dir():
        sys.exit(f"zr_ablate.probe: error: {args.sweep} is not a folder; pass a sweep folder such as outputs/demo")
    if not jobs_of(args.sweep):
        sys.exit(
            f"zr_ablate.probe: error: no completed job with a checkpoint under {args.sweep}; rerun the "
            f"sweep (checkpoints are not kept in reports/)"
        )
    device = torch.device(
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    out = args.out or args.sweep / "probe"
    try:
        run(args.sweep, out, sorted(set(args.k)), args.splits, args.data_dir, device, args.max_tokens)
    except build.CONFIG_ERRORS as e:
        sys.exit(f"zr_ablate.probe: error: {build.error_line(e)}")
    print(f"written: {out}/probe.csv, memory.csv, positions.csv")


if __name__ == "__main__":
    main()
