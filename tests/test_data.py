import multiprocessing as mp
import os
import shutil

import pytest
import torch

from tests.conftest import SHA256
from tests.helpers import ptb_slice
from zr_ablate.data import (
    DataError,
    Vocabulary,
    WindowDataset,
    batchify,
    ensure_ptb,
    sha256_of,
)


def test_real_ptb_token_counts_and_vocabulary(ptb_dir):
    vocab = Vocabulary.from_file(ptb_dir / "ptb.train.txt")
    assert len(vocab) == 10_000
    counts = {s: vocab.encode_file(ptb_dir / f"ptb.{s}.txt").numel() for s in ("train", "valid", "test")}
    assert counts == {"train": 929_589, "valid": 73_760, "test": 82_430}


def test_encoding_round_trips_the_text_with_eos_per_line(ptb_dir):
    vocab = Vocabulary.from_file(ptb_dir / "ptb.train.txt")
    ids = vocab.encode_file(ptb_dir / "ptb.valid.txt")
    lines = (ptb_dir / "ptb.valid.txt").read_text().splitlines()[:3]
    expected = [w for line in lines for w in line.split() + ["<eos>"]]
    assert [vocab.itos[i] for i in ids[: len(expected)]] == expected


def test_batchify_makes_contiguous_streams():
    stream = torch.arange(103)
    b = batchify(stream, 4)
    assert b.shape == (4, 25)  # 3 tail tokens dropped
    assert torch.equal(b[1], torch.arange(25, 50))  # row 1 continues its own text only


def test_windows_cover_every_token_once_in_order():
    streams = batchify(torch.arange(4 * 23), 4)  # [4, 23]: 22 predictions per row
    ds = WindowDataset(streams, bptt=5)
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    assert [x.shape[1] for x in xs] == [5, 5, 5, 5, 2]  # last window is partial
    assert torch.equal(torch.cat(xs, 1), streams[:, :-1])
    assert torch.equal(torch.cat(ys, 1), streams[:, 1:])


def test_download_into_empty_cache_verifies_and_is_reused(tmp_path, file_urls):
    cache = tmp_path / "cache"
    folder = ensure_ptb(None, str(cache), file_urls, SHA256)
    assert {p.name for p in folder.glob("ptb.*.txt")} == set(SHA256)
    assert all(sha256_of(folder / n) == h for n, h in SHA256.items())
    assert not list(folder.glob("*.part"))
    umask = os.umask(0)
    os.umask(umask)
    assert {(folder / n).stat().st_mode & 0o777 for n in SHA256} == {0o666 & ~umask}  # a shared cache stays readable
    stamp = (folder / "ptb.train.txt").stat().st_mtime_ns
    ensure_ptb(None, str(cache), {s: "http://127.0.0.1:9/unreachable" for s in file_urls}, SHA256)
    assert (folder / "ptb.train.txt").stat().st_mtime_ns == stamp  # no network needed the second time


def test_corrupted_cache_file_is_fetched_again(tmp_path, file_urls):
    folder = ensure_ptb(None, str(tmp_path), file_urls, SHA256)
    (folder / "ptb.valid.txt").write_text("garbage\n")
    ensure_ptb(None, str(tmp_path), file_urls, SHA256)
    assert sha256_of(folder / "ptb.valid.txt") == SHA256["ptb.valid.txt"]


def test_download_with_wrong_content_names_file_and_both_hashes(tmp_path, file_urls):
    urls = dict(file_urls, test=file_urls["valid"])  # serves the wrong file
    with pytest.raises(DataError) as e:
        ensure_ptb(None, str(tmp_path / "c"), urls, SHA256)
    msg = str(e.value)
    assert "ptb.test.txt" in msg and SHA256["ptb.test.txt"] in msg and SHA256["ptb.valid.txt"] in msg
    assert "\n" not in msg and ".part" not in msg  # names the file and its address, not a temporary file
    assert not (tmp_path / "c" / "ptb.test.txt").exists() and not list((tmp_path / "c").glob("*.part"))


def test_no_network_and_no_local_copy_names_the_fix(tmp_path):
    urls = {s: f"http://127.0.0.1:9/ptb.{s}.txt" for s in ("train", "valid", "test")}
    with pytest.raises(DataError, match=r"cannot download http://127\.0\.0\.1:9/ptb\.train\.txt .*data\.dir=") as e:
        ensure_ptb(None, str(tmp_path), urls, SHA256, timeout=5)
    assert "ZR_ABLATE_PTB_DIR=" in str(e.value) and "../" not in str(e.value)  # both fixes, no folder of ours


def test_local_folder_missing_split(tmp_path, ptb_dir):
    for name in ("ptb.train.txt", "ptb.valid.txt"):
        shutil.copy(ptb_dir / name, tmp_path / name)
    with pytest.raises(DataError, match=r"missing PTB split file .*ptb\.test\.txt"):
        ensure_ptb(str(tmp_path), "unused", {}, SHA256)


def test_local_folder_checksum_mismatch_leaves_file_alone(tmp_path, ptb_dir):
    for name in SHA256:
        shutil.copy(ptb_dir / name, tmp_path / name)
    bad = tmp_path / "ptb.valid.txt"
    bad.write_text(bad.read_text()[:-100])
    before = bad.read_bytes()
    with pytest.raises(DataError, match=r"checksum mismatch for .*ptb\.valid\.txt: expected sha256 c9fe"):
        ensure_ptb(str(tmp_path), "unused", {}, SHA256)
    assert bad.read_bytes() == before


def test_unwritable_cache_is_a_clear_error(tmp_path, file_urls):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(DataError, match="cannot write the PTB cache .*data.cache_dir"):
        ensure_ptb(None, str(blocker / "cache"), file_urls, SHA256)


def _fetch(cache, urls, queue):
    try:
        folder = ensure_ptb(None, cache, urls, SHA256)
        queue.put(sha256_of(folder / "ptb.train.txt"))
    except Exception as e:  # reported to the parent
        queue.put(repr(e))


@pytest.mark.slow  # several processes
def test_concurrent_jobs_share_one_cache_safely(tmp_path, file_urls):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_fetch, args=(str(tmp_path), file_urls, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    assert results == [SHA256["ptb.train.txt"]] * 4
    assert sorted(os.listdir(tmp_path)) == [".lock", "ptb.test.txt", "ptb.train.txt", "ptb.valid.txt"]


def test_datamodule_slices_train_but_keeps_full_vocab(ptb_dir):
    dm = ptb_slice(ptb_dir, bptt=7, eval_batch_size=3, train_tokens=1000, eval_tokens=500)
    dm.setup()
    assert len(dm.vocab) == 10_000
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 7) and torch.equal(x[:, 1:], y[:, :-1])
    assert next(iter(dm.val_dataloader()))[0].shape == (3, 7)
    assert next(iter(dm.test_dataloader()))[0].shape == (1, 7)  # paper protocol: one stream


def test_unroll_longer_than_data_is_rejected(ptb_dir):
    dm = ptb_slice(ptb_dir, batch_size=20, bptt=35, train_tokens=500)
    with pytest.raises(ValueError, match="unroll 35 is longer"):
        dm.setup()
