"""Packed members' jobs: M jobs trained at once in one process, each job folder written as its solo job writes it.

`run_packed` takes built objects (the PackedLM, the data module, each member's job folder, config and W&B
run, the shared schedule); experiment/packed_run.py builds them from the members' Hydra configs. What
each member's folder gets, as training/job.run_job writes it for one job:
    result.json            status running, then how it ended, its numbers (+ packed_with: the others' names)
    epochs.csv             one row per finished epoch (records.EPOCH_FIELDS)
    sentences_test.csv     under the paper test protocol (one stream), its per-sentence test losses
    checkpoints/last.ckpt  after every epoch: its own weights (the solo state_dict names, under "model.") and
                           random stream, so a rerun resumes it (and the context probe reads it as a solo one)
and console lines prefixed with its name. Divergence is checked as LMModule checks it (every check_every
steps and at the end of each epoch, validation too); a member that diverged is recorded `diverged` and
frozen (PackedSGD.frozen) while the others go on. tokens_per_s is each member's: the tokens it trained per
second of the group's training time (the group's throughput is M times that).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import torch

from zr_ablate.data import EOS
from zr_ablate.records import (
    COMPLETED,
    DIVERGED,
    EPOCHS,
    FAILED,
    RUNNING,
    SENTENCES,
    end_record,
    start_record,
    write_sentences,
)
from zr_ablate.training.clock import sync
from zr_ablate.training.interrupt import as_interrupted
from zr_ablate.training.job import (
    append_row,
    checkpoint_epochs,
    curve_summary,
    epoch_line,
    last_checkpoint,
    read_checkpoint,
    read_rows,
)
from zr_ablate.training.lightning_module import divergence, lr_at
from zr_ablate.training.packed_step import PackedMCDropoutEval, PackedSGD, PackedTrainStep, evaluate
from zr_ablate.training.sentences import SentenceLosses

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Schedule:
    """What every member of a group shares besides the data: LMModule's settings and the Trainer's limits."""

    lr: float
    lr_decay: float
    decay_after: int
    clip: float
    weight_decay: float
    max_epochs: int
    test_protocol: str
    mc_samples: int = 0
    check_every: int = 50
    log_every: int = 50
    cuda_graph: bool = False
    limits: dict = field(default_factory=dict)  # train / val / test -> Lightning's limit_*_batches value


@dataclass
class MemberJob:
    name: str  # its job folder's name: the console prefix, and what the others record in packed_with
    job_dir: Path
    config: dict  # result.json's config
    extra: dict = field(default_factory=dict)  # into result.json as is (W&B run id, threads, precision)
    run: object = None  # its W&B run (log, summary, finish) or None
    rows: list = field(default_factory=list)
    result: dict = field(default_factory=dict)
    saved: int = 0  # epochs its checkpoint holds


def perplexity(mean: float | None) -> float | None:
    """exp(mean NLL per token), inf where it overflows (TokenPerplexity's float64 exp)."""
    if mean is None:
        return None
    try:
        return math.exp(mean)
    except OverflowError:
        return float("inf")


def limited(loader, limit):
    """A split's windows under Lightning's limit_*_batches: None all, an int that many, a float that share."""
    if limit is None:
        return loader
    count = int(limit) if isinstance(limit, int) else int(len(loader) * limit)
    return islice(loader, count)


def _checkpoint(member: MemberJob, model, m: int, epoch: int, global_step: int, names: list[str]) -> None:
    """Member m's checkpoint after epoch `epoch` (0-based), written whole or not at all."""
    path = member.job_dir / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    stream = model.lstm.streams[m]
    state = {
        "epoch": epoch,
        "global_step": global_step,
        "state_dict": {f"model.{k}": v for k, v in model.member_state(m).items()},
        "rng": {"model": None if stream is None else stream.state_dict()},
        "packed_with": [n for n in names if n != member.name],
    }
    torch.save(state, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)


def _resume(members: list[MemberJob], model) -> tuple[int, int]:
    """Load each member's checkpoint (all of one epoch) into its slot -> (epochs done, global step)."""
    found = [last_checkpoint(str(m.job_dir)) for m in members]
    done = {checkpoint_epochs(p) if p else 0 for p in found}
    if len(done) > 1:
        raise ValueError(f"packed members must resume from the same epoch; their checkpoints hold {sorted(done)}")
    steps = 0
    for m, (member, path) in enumerate(zip(members, found)):
        if path is None:
            (member.job_dir / EPOCHS).unlink(missing_ok=True)  # a fresh run rewrites its curve
            continue
        saved = read_checkpoint(path)
        model.load_member(
            m, {k.removeprefix("model."): v for k, v in saved["state_dict"].items() if k.startswith("model.")}
        )
        stream = (saved.get("rng") or {}).get("model")
        if stream is not None and model.lstm.streams[m] is not None:
            model.lstm.streams[m].load_state_dict(stream)
        steps = saved.get("global_step", 0)
        log.info("[%s] resuming from %s (after epoch %d)", member.name, path, saved["epoch"] + 1)
    return done.pop(), steps


class _Group:
    """The members' records while they train: rows, statuses, W&B logs, console lines."""

    def __init__(self, members: list[MemberJob], opt: PackedSGD):
        self.members, self.opt = members, opt
        self.active = list(range(len(members)))

    def diverge(self, stage: str, means: torch.Tensor | None, epoch: int, where: str) -> None:
        if means is None:  # no windows (a limit of 0)
            return
        values = means.tolist()  # the one host sync of a check
        for m in list(self.active):
            said = divergence(stage, values[m], epoch, where)
            if said:
                member = self.members[m]
                member.result.update(status=DIVERGED, error=said)
                self.active.remove(m)
                self.opt.frozen.add(m)
                log.warning("[%s] diverged: %s", member.name, said)

    def log(self, m: int, values: dict, step: int) -> None:
        if self.members[m].run is not None:
            self.members[m].run.log(values, step=step)

    def epoch_rows(self, epoch, lr, train, val, tokens, train_s, step) -> None:
        for m in self.active:
            member = self.members[m]
            row = {
                "epoch": epoch + 1,
                "lr": lr,
                "train_loss": train[m],
                "train_ppl": perplexity(train[m]),
                "val_loss": None if val is None else val[m],
                "val_ppl": None if val is None else perplexity(val[m]),
                "tokens_per_s": tokens / train_s if train_s else float("nan"),
                "train_s": train_s,
                "elapsed_s": time.perf_counter() - member.start,
            }
            member.rows.append(row)
            append_row(member.job_dir / EPOCHS, row)
            self.log(m, {k: v for k, v in row.items() if k not in ("train_s", "elapsed_s") and v is not None}, step)
            log.info("[%s] %s", member.name, epoch_line(row))


def run_packed(model, data, members: list[MemberJob], schedule: Schedule, device: torch.device) -> list[dict]:
    """Train and test the group; every member's result.json says how it ended. Re-raises any error after
    recording it (members not yet diverged then read `failed`)."""
    names = [m.name for m in members]
    start = time.perf_counter()
    for m in members:
        m.job_dir.mkdir(parents=True, exist_ok=True)
    first_epoch, global_step = _resume(members, model)
    n_params = sum(p.numel() for p in model.parameters()) // len(members)
    for member in members:
        member.rows = read_rows(member.job_dir / EPOCHS, first_epoch) if first_epoch else []
        offset = member.rows[-1]["elapsed_s"] if member.rows else 0.0  # clocks go on from the last epoch
        member.start = start - offset
        member.saved = first_epoch
        member.result = {
            "status": RUNNING,
            "config": member.config,
            "n_params": n_params,
            "test_protocol": schedule.test_protocol,
            "job_dir": str(member.job_dir),
            **member.extra,
            "resumed_from_epoch": first_epoch or None,
            "packed_with": [n for n in names if n != member.name],
        }
        # A file left by an earlier run would be set beside this run's result: it goes until the test rewrites it.
        (member.job_dir / SENTENCES).unlink(missing_ok=True)
        start_record(member.job_dir, member.result)
    model.to(device)
    opt = PackedSGD(model.parameters(), lr=schedule.lr, weight_decay=schedule.weight_decay)
    step = PackedTrainStep(model, schedule.clip, schedule.cuda_graph)
    group = _Group(members, opt)
    try:
        for epoch in range(first_epoch, schedule.max_epochs):
            global_step = _epoch(model, data, group, step, schedule, epoch, global_step, device, names)
            if not group.active:
                break
        if group.active:
            _test(model, data, group, schedule, device, global_step)
    except BaseException as e:
        interrupted = as_interrupted(e)  # SIGTERM or Ctrl-C: said as a solo job says it (training.job)
        error = f"{interrupted}; rerun the same command to resume from the last checkpoint" if interrupted else None
        for m in group.active:
            # An epoch whose row was written but whose checkpoint was not (stopped in between) is not counted:
            # the record's epochs are those the next run resumes after.
            del members[m].rows[members[m].saved :]
            members[m].result.update(status=FAILED, error=error or f"{type(e).__name__}: {e}")
        raise
    finally:
        for member in members:
            member.result.update(**curve_summary(member.rows), wall_time_s=time.perf_counter() - member.start)
            end_record(member.job_dir, member.result)
    return [m.result for m in members]


def _epoch(model, data, group: _Group, step, schedule: Schedule, epoch: int, global_step: int, device, names) -> int:
    """One epoch: train (divergence checked every check_every windows), validate, rows, end-of-epoch check,
    checkpoints. Returns the global step."""
    lr = lr_at(epoch, schedule.lr, schedule.lr_decay, schedule.decay_after)
    for g in group.opt.param_groups:
        g["lr"] = lr
    model.train()
    nll = torch.zeros(model.members, dtype=torch.float64, device=device)
    state, tokens = None, 0
    sync(device)
    t0 = time.perf_counter()
    for i, (x, y) in enumerate(limited(data.train_dataloader(), schedule.limits.get("train"))):
        x, y = x.to(device), y.to(device)
        window, state, norms = step(x, y, model.init_state(x.size(0)) if state is None else state)
        group.opt.step()
        global_step += 1
        nll += window.double()
        tokens += y.numel()
        if global_step % schedule.log_every == 0:
            norms, running = norms.tolist(), torch.exp(nll / tokens).tolist()
            for m in group.active:
                group.log(m, {"grad_norm": norms[m], "train_ppl_running": running[m]}, global_step)
        if (i + 1) % schedule.check_every == 0:
            group.diverge("fit", nll / tokens, epoch, f"step {i + 1}")
    sync(device)
    train_s = time.perf_counter() - t0
    val, _, val_tokens = evaluate(model, limited(data.val_dataloader(), schedule.limits.get("val")), device)
    val = val / val_tokens if val_tokens else None
    group.diverge("val", val, epoch, "end")
    val = None if val is None else val.tolist()
    group.epoch_rows(epoch, lr, (nll / tokens).tolist(), val, tokens, train_s, global_step)
    group.diverge("fit", nll / tokens, epoch, "end")
    for m in group.active:
        _checkpoint(group.members[m], model, m, epoch, global_step, names)
        group.members[m].saved = epoch + 1
    return global_step


def _test(model, data, group: _Group, schedule: Schedule, device, global_step: int) -> None:
    """The test split (the paper's batch-1 stream or the fast protocol) and MC-dropout, per member."""
    mc = PackedMCDropoutEval(schedule.mc_samples) if schedule.mc_samples else None
    windows = limited(data.test_dataloader(), schedule.limits.get("test"))
    sentences = [SentenceLosses(data.vocab.stoi[EOS]) for _ in group.members]
    nll, mc_nll, tokens = evaluate(model, windows, device, mc, sentences)
    test_ppl = torch.exp(nll / tokens).tolist()
    mc_ppl = torch.exp(mc_nll / tokens).tolist() if mc_nll is not None else None
    for m in group.active:
        member = group.members[m]
        member.result.update(status=COMPLETED, test_ppl=test_ppl[m])
        if mc_ppl is not None:
            member.result.update(mc_test_ppl=mc_ppl[m], mc_samples=schedule.mc_samples)
        if len(sentences[m]):  # the test split ran as one stream (the paper protocol)
            write_sentences(member.job_dir, *sentences[m].sums())
        group.log(m, {k: member.result[k] for k in ("test_ppl", "mc_test_ppl") if k in member.result}, global_step)
