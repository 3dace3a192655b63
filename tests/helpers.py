"""What several test modules share: one reference LSTM covering every connection, small core inputs, a
tiny language model on a PTB slice, run.py in a subprocess, and reading a W&B offline run back."""

import json
import subprocess
import sys
from pathlib import Path

import torch

from tests.conftest import REPO, SHA256
from zr_ablate.data import PTBDataModule
from zr_ablate.dropout import DropoutSpec
from zr_ablate.model.language_model import LSTMLanguageModel
from zr_ablate.model.lstm import DroppedLSTM
from zr_ablate.training.lightning_module import LMModule

T, B, H, L = 6, 5, 8, 2  # the recurrent core's tests: steps, batch, hidden, layers
WANDB_CLI = str(Path(sys.executable).parent / "wandb")
BASE = ["model=tiny", "trainer.enable_progress_bar=false", "threads=1"]  # run.py's settings in sweep tests


def cmd(out: Path, ptb_dir, *args, multirun=False) -> list[str]:
    """run.py on the tiny profile, writing under `out`."""
    return [
        sys.executable,
        "run.py",
        *(["-m"] if multirun else []),
        f"out_root={out}",
        f"data.dir={ptb_dir}",
        *BASE,
        *args,
    ]


def run(out, ptb_dir, *args, multirun=False, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd(out, ptb_dir, *args, multirun=multirun), cwd=REPO, capture_output=True, text=True, timeout=600, env=env
    )


def inputs(seed: int = 1):
    """x [T, B, H] and a non-zero state (h0, c0), each [L, B, H]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, H, generator=g)
    h0, c0 = torch.randn(L, B, H, generator=g), torch.randn(L, B, H, generator=g)
    return x, (h0, c0)


def recurrent_core(spec: DropoutSpec, layers: int = L, impl: str = "auto", seed: int = 0) -> DroppedLSTM:
    """A recurrent core of the tests' size, weights U(-0.3, 0.3) so that every gate is far from saturation."""
    torch.manual_seed(seed)
    lstm = DroppedLSTM(H, H, layers, spec, impl=impl)
    for p in lstm.parameters():
        torch.nn.init.uniform_(p, -0.3, 0.3)
    return lstm


def _nth(masks: dict, key: str, i: int):
    return (masks.get(key) or [None] * (i + 1))[i]


def _at(mask, t: int, off: float):
    """A mask's step t ([T, ...] per step or [1, ...] the same at every step), or `off` where there is none."""
    return off if mask is None else mask[t if mask.size(0) > 1 else 0]


def _gate_inputs(v, mask, features: int) -> list:
    """The copy of v [B, F] each gate i, f, g, o sees: v * mask for a tied mask [B, F] (or none), v times
    its own quarter of an untied mask [B, 4F]."""
    if not torch.is_tensor(mask) or mask.size(-1) == features:
        return [v * mask] * 4
    return [v * m for m in mask.chunk(4, dim=-1)]


def reference(core, x: torch.Tensor, state, masks: dict):
    """An LSTM written from the equations, step by step and gate by gate, applying exactly the masks given
    (DroppedLSTM's last_masks layout; a key that is absent is no mask): the embedding mask on x, between
    layers, h_{t-1} where it enters the gates (each tied, one mask for all four gates, or untied, [.., 4F]:
    one per gate), the cell update g_t, W_hh (DropConnect), zoneout's d blending old and new c and h (h
    from the new cell), and the output mask. Returns the output [T, B, H] and h, c [L, B, H]."""
    h0, c0 = state
    hs, cs = [], []
    for li, layer in enumerate(core.layers):
        x_mask = masks.get("embedding") if li == 0 else _nth(masks, "between", li - 1)
        w_mask = _nth(masks, "weight_hh", li)
        w_hh = layer.weight_hh_l0 if w_mask is None else layer.weight_hh_l0 * w_mask
        w_ih, w_hh = layer.weight_ih_l0.chunk(4), w_hh.chunk(4)  # per gate: [H, I], [H, H]
        bias = (layer.bias_ih_l0 + layer.bias_hh_l0).chunk(4)
        r, g_mask, d_c, d_h = (_nth(masks, k, li) for k in ("recurrent", "cell_update", "zoneout_c", "zoneout_h"))
        h, c, outs = h0[li], c0[li], []
        for t in range(x.size(0)):
            xs = _gate_inputs(x[t], _at(x_mask, t, 1.0), x.size(-1))
            hs_in = _gate_inputs(h, _at(r, t, 1.0), h.size(-1))
            i, f, g, o = (xs[k] @ w_ih[k].T + hs_in[k] @ w_hh[k].T + bias[k] for k in range(4))
            c_new = f.sigmoid() * c + i.sigmoid() * g.tanh() * _at(g_mask, t, 1.0)
            h_new = o.sigmoid() * c_new.tanh()
            c = _at(d_c, t, 0.0) * c + (1 - _at(d_c, t, 0.0)) * c_new
            h = _at(d_h, t, 0.0) * h + (1 - _at(d_h, t, 0.0)) * h_new
            outs.append(h)
        x = torch.stack(outs)
        hs.append(h)
        cs.append(c)
    if masks.get("output") is not None:
        x = x * masks["output"]
    return x, torch.stack(hs), torch.stack(cs)


def ptb_slice(ptb_dir, **shape) -> PTBDataModule:
    """The local PTB files (no download), batch 4 and the paper's test protocol unless `shape` says otherwise."""
    shape = {"batch_size": 4, "eval_batch_size": 4, "test_protocol": "paper"} | shape
    return PTBDataModule(str(ptb_dir), "unused", {}, SHA256, **shape)


def tiny_lm(ptb_dir, spec: DropoutSpec | None = None, mc_samples: int = 0, **shape) -> tuple[PTBDataModule, LMModule]:
    """A set-up PTB slice (bptt 5, 3000 training and 600 evaluation tokens unless `shape` says otherwise)
    and a seeded 2x16 LSTM language model on it under the paper's SGD schedule."""
    dm = ptb_slice(ptb_dir, **({"bptt": 5, "train_tokens": 3000, "eval_tokens": 600} | shape))
    dm.setup()
    torch.manual_seed(0)
    model = LSTMLanguageModel(len(dm.vocab), 16, 2, spec or DropoutSpec(), init_scale=0.1)
    return dm, LMModule(model, lr=1.0, lr_decay=2.0, decay_after=1, clip=5.0, mc_samples=mc_samples)


def read_run(job: Path) -> dict:
    """The run's name, group, job type, tags, config, exit code, history and summary from its .wandb log."""
    [log] = job.glob("wandb/offline-run-*/run-*.wandb")
    summary = json.loads(
        subprocess.run(
            [WANDB_CLI, "leet", "inspect", "--summary", "--json", str(log)], capture_output=True, text=True, check=True
        ).stdout
    )
    records = [
        json.loads(line)
        for line in subprocess.run(
            [WANDB_CLI, "leet", "inspect", "--json", str(log)], capture_output=True, text=True, check=True
        ).stdout.splitlines()
    ]
    [run] = [r["run"] for r in records if r["type"] == "run"]
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    return dict(summary, group=run["run_group"], job_type=run["job_type"], history=history)
