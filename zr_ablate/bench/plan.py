"""The plan of a time-budgeted run: from estimated seconds per job, how many jobs run at once and what each
is expected to reach before the deadline. Pure: numbers in, a plan out; the caller reads records, bench
files and the clock (zr_ablate.bench.budget).

    work = [estimate(name, shape, speed, start_s) for each job still to do]
    the_plan = plan(work, available_s=1800, sharing=Sharing({1: 1.0, 2: 0.64, 4: 0.5}))

One rule decides which job a free slot takes, in the plan's simulation and in the real run alike (`pick`):
with the time left, the first waiting job expected to complete (its estimate x margin fits); failing that,
with `partial`, the first whose first epoch ends in time, so that its checkpoint carries that epoch to the
next run. Jobs are taken in order (resumed ones first: nearest to completion, and their checkpoint is
used); a job that does not fit is passed over and a later, shorter one may still start. Packing jobs of
one shape in one process is weighed against this in zr_ablate.bench.packing, whose groups are run units
(Work) here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

COMPLETE, PARTIAL, NOT_STARTED = "complete", "partial", "not started"  # what the plan expects of a job


@dataclass(frozen=True)
class Speed:
    """Tokens per second of one job running alone: training as run.py trains (Lightning included) and
    evaluation at the validation batch."""

    train: float
    evaluate: float


@dataclass(frozen=True)
class Shape:
    """What one job has left to do: epochs, tokens per split and the batches they are evaluated at."""

    epochs_left: int
    train_tokens: int
    valid_tokens: int
    test_tokens: int
    eval_batch: int
    test_batch: int  # 1 under the paper's test protocol
    resumed: bool = False  # it has a checkpoint to resume from


@dataclass(frozen=True)
class Work:
    """One job still to do, in seconds it would take alone."""

    name: str
    epochs_left: int
    epoch_s: float  # one epoch: training and validation
    start_s: float  # process start to the first step: imports, data, model, logger
    test_s: float  # the test after the last epoch
    resumed: bool = False
    # Jobs with equal keys can train packed in one process (equal settings but dropout and seed, the same epoch
    # to resume from; zr_ablate.bench.packing); None: it cannot be packed.
    pack_key: str | None = None

    @property
    def seconds(self) -> float:
        return self.start_s + self.epochs_left * self.epoch_s + self.test_s

    @property
    def first_checkpoint_s(self) -> float:
        """Seconds until its first epoch is checkpointed (or until it ends, with no epoch left)."""
        return self.start_s + self.epoch_s if self.epochs_left else self.seconds


def estimate(name: str, shape: Shape, speed: Speed, start_s: float, pack_key: str | None = None) -> Work:
    """A job's seconds from its shape and speed. The test's speed is taken as the validation speed scaled
    by the batch (a step costs about the same at batch 1 as at batch 20 on a GPU; on a CPU this
    overestimates the test, which errs on the safe side)."""
    epoch = shape.train_tokens / speed.train + shape.valid_tokens / speed.evaluate
    test = shape.test_tokens / (speed.evaluate * shape.test_batch / shape.eval_batch)
    return Work(name, shape.epochs_left, epoch, start_s, test, shape.resumed, pack_key)


@dataclass(frozen=True)
class Sharing:
    """Each job's speed with k jobs at once as a fraction of its speed alone, at the measured levels k
    (zr_ablate.bench.concurrency; {1: 1.0} when nothing was measured)."""

    levels: dict[int, float] = field(default_factory=lambda: {1: 1.0})

    @property
    def most(self) -> int:
        return max(self.levels)

    def factor(self, k: int) -> float:
        """Linear between measured levels; beyond the largest, its aggregate is taken as flat."""
        if k in self.levels:
            return self.levels[k]
        known = sorted(self.levels)
        if k > known[-1]:
            return self.levels[known[-1]] * known[-1] / k
        lo, hi = max(n for n in known if n < k), min(n for n in known if n > k)
        return self.levels[lo] + (self.levels[hi] - self.levels[lo]) * (k - lo) / (hi - lo)


def worth_starting(work: Work, left_s: float, rate: float, margin: float, partial: bool) -> str | None:
    """COMPLETE if the job is expected to finish in left_s at `rate` x its speed alone, PARTIAL if (with
    `partial`) its first epoch is, else None."""
    if work.seconds * margin / rate <= left_s:
        return COMPLETE
    if partial and work.epochs_left and work.first_checkpoint_s * margin / rate <= left_s:
        return PARTIAL
    return None


def pick(waiting: list[Work], left_s: float, rate: float, margin: float, partial: bool) -> tuple[Work, str] | None:
    """The job a free slot takes, and what it is expected to reach: the first waiting job expected to
    complete; failing that (with `partial`) the first whose first epoch ends in time."""
    for want in (COMPLETE, PARTIAL):
        for w in waiting:
            if worth_starting(w, left_s, rate, margin, partial) == want:
                return w, want
    return None


def epochs_reached(work: Work, seconds_run: float) -> int:
    """Epochs a job checkpoints in `seconds_run` of its own time (seconds alone)."""
    if seconds_run >= work.seconds:
        return work.epochs_left
    return max(0, min(work.epochs_left, math.floor((seconds_run - work.start_s) / work.epoch_s)))


@dataclass
class Outcome:
    expect: str  # COMPLETE, PARTIAL or NOT_STARTED
    start_s: float | None = None
    end_s: float | None = None  # when it completes; for a partial job, when it is stopped
    epochs: int = 0  # epochs it is expected to have checkpointed by then (of epochs_left)


def simulate(
    work: list[Work], at_once: int, sharing: Sharing, available_s: float, margin: float, partial: bool
) -> dict[str, Outcome]:
    """The run as it would go if every estimate were right: a free slot takes the first job still waiting
    that is worth starting; running jobs share the device at sharing.factor(number running); at
    available_s whatever still runs is stopped."""
    waiting, running, out, t = list(work), {}, {w.name: Outcome(NOT_STARTED) for w in work}, 0.0
    by_name = {w.name: w for w in work}
    while True:
        while len(running) < at_once:
            picked = pick(waiting, available_s - t, sharing.factor(len(running) + 1), margin, partial)
            if picked is None:
                break
            job, expect = picked
            waiting.remove(job)
            running[job.name] = job.seconds  # seconds alone still to run
            out[job.name] = Outcome(expect, t)
        if not running:
            return out
        rate = sharing.factor(len(running))
        step = min(running.values()) / rate
        if t + step > available_s:  # the deadline comes first: every running job is stopped there
            for name, left in running.items():
                w = by_name[name]
                done = w.seconds - left + (available_s - t) * rate
                out[name] = Outcome(PARTIAL, out[name].start_s, available_s, epochs_reached(w, done))
            return out
        t += step
        for name in list(running):
            running[name] -= step * rate
            if running[name] <= 1e-9:
                out[name] = Outcome(COMPLETE, out[name].start_s, t, by_name[name].epochs_left)
                del running[name]


@dataclass
class Plan:
    at_once: int  # run units (processes) at once
    available_s: float
    order: list[str]  # the jobs, in the order in which their units are considered
    outcomes: dict[str, Outcome]
    seconds_alone: dict[str, float]
    units: list[Work] = field(default_factory=list)  # what runs as one process: a job, or a packed group
    pack: int = 1  # at most this many jobs packed in one process (1: none)
    groups: dict[str, list[str]] = field(default_factory=dict)  # a packed unit's name -> its jobs

    def names(self, expect: str) -> list[str]:
        return [n for n in self.order if self.outcomes[n].expect == expect]

    def as_dict(self) -> dict:
        return asdict(self)


def plan(
    work: list[Work],
    available_s: float,
    sharing: Sharing = Sharing(),
    at_once: int | None = None,
    margin: float = 1.1,
    partial: bool = True,
) -> Plan:
    """The number of jobs at once (`at_once`, or from 1 to the most measured) that completes the most jobs,
    then trains the most epochs, then ends soonest; fewer at once on a tie."""
    ordered = sorted(work, key=lambda w: not w.resumed)  # stable: otherwise the sweep's order

    def k_score(k: int) -> tuple:
        return *score(simulate(ordered, k, sharing, available_s, margin, partial)), -k

    best = at_once or max(range(1, sharing.most + 1), key=k_score)
    return Plan(
        at_once=best,
        available_s=available_s,
        order=[w.name for w in ordered],
        outcomes=simulate(ordered, best, sharing, available_s, margin, partial),
        seconds_alone={w.name: w.seconds for w in ordered},
        units=ordered,
    )


def score(outcomes: dict[str, Outcome]) -> tuple:
    """What a plan is judged by, best highest: jobs completed, then epochs trained, then the soonest end."""
    ends = [o.end_s for o in outcomes.values() if o.end_s is not None]
    complete = sum(1 for o in outcomes.values() if o.expect == COMPLETE)
    return complete, sum(o.epochs for o in outcomes.values()), -max(ends, default=0.0)
