"""A sweep's records packed into a size-limited archive, for a node whose files come back only through
something with limits (a job scheduler's output, a transfer quota): at most `max_files` gzip tarballs of at
most `max_bytes` each, PATH, then PATH-2, PATH-3... for `--archive PATH.tar.gz`.

What goes in, most useful first: every job's records (result.json, epochs.csv, run.log, console.log,
.hydra/), then the budgeted runs' logs and plans (budget/), then the W&B offline runs (each job's wandb/,
without W&B's debug logs). Checkpoints stay behind: they are large, and the records say where they are.
Files go into the parts in that order; what fits in no part is left out and named.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

BLOCK = 512  # tar's header and data block


def tar_bound(sizes: list[int]) -> int:
    """An upper bound of a gzip tarball's size holding files of these sizes, however (in)compressible: per
    file its header, a PAX header and its record (a long path) and its data, each in whole blocks; the
    end-of-archive records (tarfile pads to 20 blocks); deflate's worst-case expansion (zlib's
    deflateBound) with gzip's header and trailer."""
    raw = sum(3 * BLOCK + -(-n // BLOCK) * BLOCK for n in sizes) + 20 * BLOCK
    return raw + raw // 4096 + raw // 16384 + 64


def wanted(sweep: Path) -> list[Path]:
    """The sweep's files worth keeping, most useful first."""
    files = sorted(p for p in sweep.rglob("*") if p.is_file())
    rel = {p: p.relative_to(sweep).parts for p in files}
    checkpoint = [p for p in files if "checkpoints" in rel[p]]
    wandb = [p for p in files if "wandb" in rel[p] and p not in checkpoint]
    wandb = [p for p in wandb if "logs" not in rel[p] and not p.name.startswith("debug")]
    budget = [p for p in files if rel[p][0] == "budget"]
    records = [p for p in files if p not in set(checkpoint) | set(wandb) | set(budget) and "wandb" not in rel[p]]
    return records + budget + wandb


def part_name(path: Path, k: int) -> Path:
    """PATH for the first part, then PATH with -k before its suffixes (runs.tar.gz -> runs-2.tar.gz)."""
    if k == 1:
        return path
    stem, dot, suffixes = path.name.partition(".")
    return path.with_name(f"{stem}-{k}{dot}{suffixes}")


def split(sizes: list[int], max_files: int | None, max_bytes: int | None) -> tuple[list[list[int]], list[int]]:
    """Indexes of `sizes` packed in order into at most max_files parts each within max_bytes (by tar_bound;
    None: no limit); -> (parts, left out)."""
    parts, left_out = [[]], []
    for i, n in enumerate(sizes):
        if max_bytes is not None and tar_bound([n]) > max_bytes:
            left_out.append(i)
        elif max_bytes is None or tar_bound([sizes[j] for j in parts[-1]] + [n]) <= max_bytes:
            parts[-1].append(i)
        elif max_files is None or len(parts) < max_files:
            parts.append([i])
        else:
            left_out.append(i)
    return [p for p in parts if p], left_out


def pack(sweep: Path, path: Path, max_files: int | None, max_bytes: int | None) -> tuple[list[Path], list[Path]]:
    """Write the parts; -> (the tarballs written, the files left out). Names in the tarballs start with the
    sweep folder's name, so unpacking in an out_root puts the records where a rerun finds them."""
    files = wanted(sweep)
    parts, left_out = split([f.stat().st_size for f in files], max_files, max_bytes)
    written = []
    for k, indexes in enumerate(parts, start=1):
        target = part_name(path, k)
        with tarfile.open(target, "w:gz") as tar:
            for i in indexes:
                tar.add(files[i], arcname=str(files[i].relative_to(sweep.parent)))
        written.append(target)
    return written, [files[i] for i in left_out]
