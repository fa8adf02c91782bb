"""Download, verification, cache and safe extraction, against a real local HTTP server."""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import subprocess
import sys
import tarfile
import textwrap
import threading
import time

import numpy as np
import pytest

import kdet
from kdet.zoo import cache
from kdet.zoo.download import DownloadVerificationError, check_url, extract_tar_safely, fetch
from tests.zoo.helpers import LocalServer, Route, closed_port_url

DATA = np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
SHA = hashlib.sha256(DATA).hexdigest()
CORRUPT = DATA[:1000] + bytes(b ^ 0xFF for b in DATA[1000:1010]) + DATA[1010:]


@pytest.fixture(autouse=True)
def kdet_home(tmp_path, monkeypatch):
    home = tmp_path / "kdet_home"
    monkeypatch.setenv("KDET_HOME", str(home))
    return home


@pytest.fixture
def server():
    routes = {
        "/good.bin": DATA,
        "/corrupt.bin": CORRUPT,  # same size, different bytes
        "/truncated.bin": Route(body=DATA, truncate_at=len(DATA) // 2),
        "/slow.bin": Route(body=DATA, delay_per_chunk_s=0.004),
        "/redirect": Route(status=302, location="http://example.com/good.bin"),
    }
    with LocalServer(routes) as s:
        yield s


def test_cache_dir_follows_kdet_home(kdet_home, monkeypatch):
    assert cache.downloads_dir() == kdet_home / "downloads"
    monkeypatch.delenv("KDET_HOME")
    assert cache.kdet_home() == pathlib.Path.home() / ".kdet"


def test_fetch_downloads_verifies_and_records_sidecar(server, kdet_home, capsys):
    path = fetch(server.url("/good.bin"), sha256=SHA, size=len(DATA))
    assert path == kdet_home / "downloads" / "good.bin"
    assert path.read_bytes() == DATA
    assert cache.read_sidecar(path) == SHA
    assert "Downloading good.bin" in capsys.readouterr().err  # progress on stderr
    # Second call: served from the cache, no new request.
    assert fetch(server.url("/good.bin"), sha256=SHA, size=len(DATA)) == path
    assert server.hits["/good.bin"] == 1
    assert not [p for p in path.parent.iterdir() if ".part" in p.name]


def test_fetch_custom_filename_dir_and_prefix(server, tmp_path):
    path = fetch(server.url("/good.bin"), sha256_prefix=SHA[:8], filename="model-x.bin",
                 cache_dir=tmp_path / "c", progress=False)
    assert path == tmp_path / "c" / "model-x.bin" and path.read_bytes() == DATA


def test_mismatched_download_is_never_kept(server, kdet_home):
    with pytest.raises(DownloadVerificationError, match="failed verification: sha256"):
        fetch(server.url("/corrupt.bin"), sha256=SHA, progress=False)
    with pytest.raises(DownloadVerificationError, match="does not start with"):
        fetch(server.url("/corrupt.bin"), sha256_prefix="00000000", progress=False)
    with pytest.raises(DownloadVerificationError, match="bytes, expected"):
        fetch(server.url("/good.bin"), size=len(DATA) + 1, progress=False)
    downloads = kdet_home / "downloads"
    assert not [p for p in downloads.iterdir() if not p.name.endswith(".lock")]


def test_truncated_transfer_raises_and_leaves_nothing(server, kdet_home):
    with pytest.raises(kdet.WeightsUnavailableError):
        fetch(server.url("/truncated.bin"), size=len(DATA), progress=False)
    assert not (kdet_home / "downloads" / "truncated.bin").exists()
    assert not [p for p in (kdet_home / "downloads").iterdir() if ".part" in p.name]


def test_404_names_url_file_and_directory(server, kdet_home):
    url = server.url("/missing.bin")
    with pytest.raises(kdet.WeightsUnavailableError) as info:
        fetch(url, progress=False)
    message = str(info.value)
    assert url in message and "404" in message and "'missing.bin'" in message
    assert str(kdet_home / "downloads") in message


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_cached_file_is_reported_and_refetched(server, damage):
    path = fetch(server.url("/good.bin"), progress=False)  # no sha256/size published
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[5] ^= 0xFF
    else:
        raw = raw[:-100]
    path.write_bytes(bytes(raw))
    # The sidecar recorded at the first download catches it even without a published hash.
    with pytest.warns(UserWarning, match="corrupt"):
        again = fetch(server.url("/good.bin"), progress=False)
    assert again.read_bytes() == DATA and server.hits["/good.bin"] == 2


def test_cached_file_mismatching_published_hash_is_refetched(server, kdet_home):
    target = kdet_home / "downloads" / "good.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(CORRUPT)  # e.g. left by an older release
    with pytest.warns(UserWarning, match="corrupt"):
        assert fetch(server.url("/good.bin"), sha256=SHA, progress=False).read_bytes() == DATA


def test_offline_error_then_placed_file_works(kdet_home):
    url = closed_port_url("/yolov3.weights")
    with pytest.raises(kdet.WeightsUnavailableError) as info:
        fetch(url, sha256=SHA, size=len(DATA), progress=False)
    message = str(info.value)
    directory = kdet_home / "downloads"
    assert url in message and "'yolov3.weights'" in message and str(directory) in message
    assert SHA in message and "\n" not in message
    # Place a wrong file: it is refused (and removed), never used.
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "yolov3.weights").write_bytes(CORRUPT)
    with pytest.warns(UserWarning), pytest.raises(kdet.WeightsUnavailableError):
        fetch(url, sha256=SHA, size=len(DATA), progress=False)
    # Place the right file: works without network and gets a sidecar.
    (directory / "yolov3.weights").write_bytes(DATA)
    assert fetch(url, sha256=SHA, size=len(DATA), progress=False).read_bytes() == DATA
    assert cache.read_sidecar(directory / "yolov3.weights") == SHA


def test_file_url(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(DATA)
    path = fetch(src.as_uri(), sha256=SHA, cache_dir=tmp_path / "cache", progress=False)
    assert path.read_bytes() == DATA


@pytest.mark.parametrize("url", ["https://example.com/a.bin", "http://127.0.0.1:8000/a",
                                 "http://localhost/a", "file:///tmp/a"])
def test_check_url_allows(url):
    assert check_url(url) == url


@pytest.mark.parametrize("url", ["http://example.com/a.bin", "ftp://example.com/a", "a.bin",
                                 "https:///nohost", "http://127.0.0.2.example.com/a"])
def test_check_url_refuses(url):
    with pytest.raises(ValueError, match="only downloads over https"):
        check_url(url)


def test_redirect_to_insecure_url_is_refused(server):
    with pytest.raises(ValueError, match="Refusing to download 'http://example.com"):
        fetch(server.url("/redirect"), filename="x.bin", progress=False)


def test_target_appears_only_when_complete(server, kdet_home):
    target = kdet_home / "downloads" / "slow.bin"
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault(
        "path", fetch(server.url("/slow.bin"), sha256=SHA, progress=False)))
    thread.start()
    seen_partial = False
    while thread.is_alive():
        if target.exists():  # it may only appear complete and verified
            assert target.stat().st_size == len(DATA)
        seen_partial |= any(".part" in p.name for p in target.parent.glob("*"))
        time.sleep(0.005)
    thread.join()
    assert seen_partial and result["path"].read_bytes() == DATA


_CHILD = textwrap.dedent("""
    import sys
    from kdet.zoo.download import fetch
    path = fetch(sys.argv[1], sha256=sys.argv[2], progress=False)
    print(path)
""")


def test_two_processes_share_one_download(server, kdet_home):
    env = {**os.environ, "KDET_HOME": str(kdet_home)}
    args = [sys.executable, "-c", _CHILD, server.url("/slow.bin"), SHA]
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    paths = {out.strip() for out, _ in outs}
    assert paths == {str(kdet_home / "downloads" / "slow.bin")}
    assert pathlib.Path(paths.pop()).read_bytes() == DATA
    assert server.hits["/slow.bin"] == 1  # the second process waited and reused it


# --- Safe tar extraction ----------------------------------------------------

def _tar(path: pathlib.Path, members: list[tuple[str, str, bytes | str]]) -> pathlib.Path:
    with tarfile.open(path, "w:gz") as tar:
        for kind, name, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind in ("sym", "hard"):
                info.type = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE
                info.linkname = payload
                tar.addfile(info)
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
                tar.addfile(info)
    return path


def test_extract_tar_safely_extracts_a_normal_archive(tmp_path):
    archive = _tar(tmp_path / "ckpt.tar.gz", [
        ("dir", "efficientdet-d0", b""),
        ("file", "efficientdet-d0/model.index", b"index"),
        ("file", "efficientdet-d0/model.data-00000-of-00001", DATA[:100]),
        ("sym", "efficientdet-d0/latest", "model.index"),
        ("hard", "efficientdet-d0/copy", "efficientdet-d0/model.index"),
    ])
    dest = extract_tar_safely(archive, tmp_path / "out")
    assert (dest / "efficientdet-d0/model.index").read_bytes() == b"index"
    assert (dest / "efficientdet-d0/latest").read_bytes() == b"index"
    assert (dest / "efficientdet-d0/copy").read_bytes() == b"index"
    assert (dest / "efficientdet-d0/model.data-00000-of-00001").read_bytes() == DATA[:100]
    with pytest.raises(FileExistsError):
        extract_tar_safely(archive, dest)


@pytest.mark.parametrize("member, reason", [
    (("file", "../evil.txt", b"x"), "contains '..'"),
    (("file", "ok/../../evil.txt", b"x"), "contains '..'"),
    (("file", "/tmp/kdet-evil-abs.txt", b"x"), "absolute path"),
    (("sym", "passwd", "/etc/passwd"), "symlink to the absolute path"),
    (("sym", "up", "../../outside"), "outside the destination"),
    (("hard", "hl", "../outside.txt"), "hard link"),
    (("fifo", "pipe", b""), "special file"),
])
def test_extract_tar_safely_refuses_malicious_members(tmp_path, member, reason):
    archive = _tar(tmp_path / "evil.tar.gz", [("file", "fine.txt", b"ok"), member])
    before = set(tmp_path.rglob("*"))
    with pytest.raises(ValueError, match=reason):
        extract_tar_safely(archive, tmp_path / "sub" / "out")
    assert not (tmp_path / "sub" / "out").exists()
    assert set(tmp_path.rglob("*")) - before <= {tmp_path / "sub"}  # nothing written anywhere
    assert not pathlib.Path("/tmp/kdet-evil-abs.txt").exists()
