"""Released checkpoints by name (lowssl/released.py): the registry's data, and fetch against a local
HTTP server on 127.0.0.1 (Range requests supported), never the real network."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import re
import socket
import subprocess
import threading
import zipfile
from pathlib import Path

import pytest
import torch

from lowssl import released
from lowssl.backbones import available
from lowssl.checkpoints import get_format
from lowssl.records import read_records
from lowssl.released import ReleasedError, fetch, resolve, sha256_record

# dino_resnet50 is a DINO backbone-only file: a flat state dict under torchvision names.
ENTRY = "dino_resnet50"


def _tiny_checkpoint(seed: int = 0) -> bytes:
    """A few ResNet50 stem tensors under torchvision names, as a backbone-only DINO file holds them."""
    generator = torch.Generator().manual_seed(seed)
    state = {
        "conv1.weight": torch.randn(64, 3, 7, 7, generator=generator),
        "bn1.weight": torch.ones(64),
        "bn1.bias": torch.zeros(64),
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


CHECKPOINT = _tiny_checkpoint()
HTML = b"<!DOCTYPE html><html><body>Sign in to continue</body></html>"


class Server:
    """Serves ``files`` (path -> bytes) and records the Range header of every request."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.ranges: list[str | None] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                requested = self.headers.get("Range")
                server.ranges.append(requested)
                start = int(re.fullmatch(r"bytes=(\d+)-", requested)[1]) if requested else 0
                self.send_response(206 if requested else 200)
                if requested:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:])

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server():
    served = Server({"/ckpt.pth": CHECKPOINT, "/page.html": HTML})
    served.thread.start()
    yield served
    served.httpd.shutdown()
    served.httpd.server_close()


def _point_at(monkeypatch, url: str, **changes) -> released.Released:
    """Make the registry's ENTRY download from ``url`` (restored after the test)."""
    entry = dataclasses.replace(resolve(ENTRY), url=url, **changes)
    monkeypatch.setitem(released.registry(), ENTRY, entry)
    return entry


def test_every_entry_names_a_registered_format_branch_and_backbone():
    for entry in released.registry().values():
        fmt = get_format(entry.format)
        assert entry.branch in fmt.branches, entry.name
        assert entry.arch in available(), entry.name
        assert entry.url.startswith("https://") and entry.source.startswith("https://"), entry.name
        assert entry.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", entry.sha256), entry.name
        assert entry.md5_prefix is None or re.fullmatch(r"[0-9a-f]{8,32}", entry.md5_prefix), entry.name
        assert all(1 <= row.table <= 9 and row.row for row in entry.paper), entry.name


def test_download_urls_follow_the_hosts():
    def url_of(published: str) -> str | None:
        return released.download_url(dataclasses.replace(resolve(ENTRY), url=published))

    assert (
        url_of("https://huggingface.co/u/r/blob/main/a.pth.tar")
        == "https://huggingface.co/u/r/resolve/main/a.pth.tar"
    )
    assert url_of("https://drive.google.com/file/d/AbC-1_x/view?usp=sharing") == (
        "https://drive.google.com/uc?export=download&id=AbC-1_x"
    )
    assert url_of("https://drive.google.com/drive/folders/XyZ?usp=sharing") is None
    assert url_of("https://dl.fbaipublicfiles.com/x/y.pth") == "https://dl.fbaipublicfiles.com/x/y.pth"


def test_fetch_downloads_verifies_the_sha256_and_renames_into_the_cache(server, monkeypatch, tmp_path):
    _point_at(monkeypatch, server.url("/ckpt.pth"), sha256=hashlib.sha256(CHECKPOINT).hexdigest())
    path = fetch(ENTRY, cache_dir=tmp_path, progress=False)
    assert path == tmp_path / f"{ENTRY}.pth"
    assert path.read_bytes() == CHECKPOINT
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, f"{path.name}.sha256"]  # no .partial
    assert fetch(ENTRY, cache_dir=tmp_path, progress=False) == path  # cached: no second download
    assert server.ranges == [None]


def test_a_partial_download_is_resumed_with_a_range_request(server, monkeypatch, tmp_path):
    _point_at(monkeypatch, server.url("/ckpt.pth"), sha256=hashlib.sha256(CHECKPOINT).hexdigest())
    half = len(CHECKPOINT) // 2
    (tmp_path / f"{ENTRY}.pth.partial").write_bytes(CHECKPOINT[:half])
    path = fetch(ENTRY, cache_dir=tmp_path, progress=False)
    assert server.ranges == [f"bytes={half}-"]
    assert path.read_bytes() == CHECKPOINT


def test_a_hash_mismatch_is_refused_and_nothing_is_kept(server, monkeypatch, tmp_path):
    _point_at(monkeypatch, server.url("/ckpt.pth"), sha256="0" * 64)
    with pytest.raises(ReleasedError) as error:
        fetch(ENTRY, cache_dir=tmp_path, progress=False)
    message = str(error.value)
    assert f"expected {'0' * 64}" in message and f"got {hashlib.sha256(CHECKPOINT).hexdigest()}" in message
    assert list(tmp_path.iterdir()) == []


def test_a_published_md5_prefix_is_checked_too(server, monkeypatch, tmp_path):
    _point_at(monkeypatch, server.url("/ckpt.pth"), md5_prefix="00000000")
    with pytest.raises(ReleasedError, match="MD5 mismatch, expected a digest starting 00000000"):
        fetch(ENTRY, cache_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_an_html_page_is_not_a_checkpoint(server, monkeypatch, tmp_path):
    _point_at(monkeypatch, server.url("/page.html"))
    with pytest.raises(ReleasedError, match="sent is an HTML/XML page; download .* by hand") as error:
        fetch(ENTRY, cache_dir=tmp_path, progress=False)
    assert f"save it as {tmp_path / (ENTRY + '.pth')} " in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_a_file_saved_in_the_cache_by_hand_is_checked_before_use(tmp_path):
    (tmp_path / f"{ENTRY}.pth").write_bytes(HTML)
    with pytest.raises(
        ReleasedError, match="the cached file .* is an HTML/XML page.*the cached file was removed"
    ):
        fetch(ENTRY, cache_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_zip_bomb_download_is_refused_before_it_is_decompressed(server, monkeypatch, tmp_path):
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", bytes(8 << 20))  # 8 MiB in 8 KB: torch.save never deflates
    server.files["/bomb.pth"] = bomb.getvalue()
    _point_at(monkeypatch, server.url("/bomb.pth"))
    with pytest.raises(ReleasedError, match="is not a checkpoint .*declare 8,388,608 bytes uncompressed"):
        fetch(ENTRY, cache_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_of_another_format_is_refused(server, monkeypatch, tmp_path):
    _point_at(monkeypatch, server.url("/ckpt.pth"), format="moco", branch="query")
    with pytest.raises(ReleasedError, match="not a 'moco' checkpoint"):
        fetch(ENTRY, cache_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_name_suggests_the_closest():
    with pytest.raises(
        ReleasedError, match="no released checkpoint is named 'dino_resnt50'. Did you mean 'dino_resnet50'"
    ):
        resolve("dino_resnt50")
    with pytest.raises(ReleasedError) as error:  # a name missing its suffix: every entry it starts
        resolve("disco_resnet18")
    assert "Did you mean 'disco_resnet18_mocov2_r152' or 'disco_resnet18_swav_r50w2'?" in str(error.value)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_offline_says_where_to_put_the_file_by_hand(monkeypatch, tmp_path, capsys):
    entry = _point_at(monkeypatch, f"http://127.0.0.1:{_closed_port()}/ckpt.pth")
    status = released.main(["--cache-dir", str(tmp_path), "fetch", ENTRY, "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert status != 0 and len(err.splitlines()) == 1
    assert "cannot download" in err and str(tmp_path / f"{ENTRY}.pth") in err and entry.url in err


def test_a_folder_release_is_by_hand_only(tmp_path):
    with pytest.raises(ReleasedError, match="published as a folder") as error:
        fetch("simreg_mobilenet_v2", cache_dir=tmp_path, progress=False)
    assert str(tmp_path / "simreg_mobilenet_v2.pth") in str(error.value)


def test_evaluate_checkpoint_fetches_a_name_and_runs_the_stages_with_its_layout(
    server, monkeypatch, tmp_path
):
    import lowssl.results.evaluate_checkpoint as evaluate_checkpoint

    _point_at(monkeypatch, server.url("/ckpt.pth"))
    monkeypatch.setenv(released.CACHE_ENV, str(tmp_path / "cache"))
    commands: list[list[str]] = []
    monkeypatch.setattr(evaluate_checkpoint, "run", commands.append)
    status = evaluate_checkpoint.main([ENTRY, "--protocols", "knn", "--work-dir", str(tmp_path / "work")])
    assert status == 0
    knn = commands[0]
    assert knn[knn.index("--checkpoint") + 1] == str(tmp_path / "cache" / f"{ENTRY}.pth")
    layout = {knn[i]: knn[i + 1] for i in range(len(knn) - 1) if knn[i] in ("--format", "--arch", "--branch")}
    assert layout == {"--format": "dino-backbone", "--arch": "resnet50", "--branch": "backbone"}


def test_evaluate_checkpoint_an_unknown_name_is_one_line_with_a_suggestion(capsys):
    from lowssl.results.evaluate_checkpoint import main

    assert main(["sslight_resnet18_dino_200"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Did you mean 'sslight_resnet18_dino_200ep'?" in err


def test_the_doc_lists_every_entry():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "released.md").read_text()
    assert [name for name in released.registry() if f"`{name}`" not in doc] == []


# ---- trust-on-first-use: the first fetched file's SHA-256, checked at every later use ---------------

OTHER = _tiny_checkpoint(seed=1)  # a checkpoint of the same layout, other weights (a random init)
OTHER_SHA256 = hashlib.sha256(OTHER).hexdigest()


def test_tofu_the_first_fetch_is_recorded_and_a_replaced_cached_file_is_refused(
    server, monkeypatch, tmp_path, capsys
):
    """Before: every sha256 is null, so a cached file replaced after download was used as the release."""
    _point_at(monkeypatch, server.url("/ckpt.pth"))
    path = fetch(ENTRY, cache_dir=tmp_path, progress=False)
    sha256 = hashlib.sha256(CHECKPOINT).hexdigest()
    assert sha256_record(path).read_text() == f"{sha256}  {path.name}\n"
    check = subprocess.run(["sha256sum", "-c", sha256_record(path).name], cwd=tmp_path, capture_output=True)
    assert check.returncode == 0, check  # the record is sha256sum's own format
    assert fetch(ENTRY, cache_dir=tmp_path, progress=False) == path  # unchanged: accepted

    path.write_bytes(OTHER)  # replaced after download, under the release's name
    assert released.main(["--cache-dir", str(tmp_path), "fetch", ENTRY, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"the cached file {path} has SHA-256 {OTHER_SHA256}, but {sha256} was recorded" in err, err
    assert "trust-on-first-use" in err and f"rm {path} && python -m lowssl.released fetch {ENTRY}" in err, err
    assert path.read_bytes() == OTHER  # kept for the user to look at; never used
    assert server.ranges == [None]


def test_tofu_a_file_saved_by_hand_is_recorded_at_its_first_use(tmp_path):
    path = tmp_path / f"{ENTRY}.pth"
    path.write_bytes(CHECKPOINT)
    assert fetch(ENTRY, cache_dir=tmp_path, progress=False) == path
    assert sha256_record(path).read_text().split()[0] == hashlib.sha256(CHECKPOINT).hexdigest()


def test_tofu_a_download_that_differs_from_the_record_is_refused(server, monkeypatch, tmp_path):
    """The cached file deleted, the name fetched again: the bytes must be those first fetched."""
    _point_at(monkeypatch, server.url("/ckpt.pth"))
    path = fetch(ENTRY, cache_dir=tmp_path, progress=False)
    path.unlink()
    server.files["/ckpt.pth"] = OTHER  # the published file changed upstream
    with pytest.raises(ReleasedError, match=f"sent has SHA-256 {OTHER_SHA256}, but .* was recorded") as error:
        fetch(ENTRY, cache_dir=tmp_path, progress=False)
    assert f"rm {sha256_record(path)}" in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [sha256_record(path).name]  # nothing else kept


def test_a_published_digest_is_checked_at_every_use_of_the_cached_file(server, monkeypatch, tmp_path):
    _point_at(monkeypatch, server.url("/ckpt.pth"), sha256=hashlib.sha256(CHECKPOINT).hexdigest())
    path = fetch(ENTRY, cache_dir=tmp_path, progress=False)
    path.write_bytes(OTHER)
    with pytest.raises(ReleasedError, match=f"SHA-256 mismatch, expected .*, got {OTHER_SHA256}.*removed"):
        fetch(ENTRY, cache_dir=tmp_path, progress=False)
    assert not path.exists()


def test_the_listing_shows_which_entries_carry_a_published_digest(monkeypatch, tmp_path, capsys):
    _point_at(monkeypatch, resolve(ENTRY).url, sha256="a" * 64)
    assert released.main(["--cache-dir", str(tmp_path), "list"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "published digest" in rows["name"]
    assert " sha256 " in rows[ENTRY] and " md5-prefix " in rows["mocov2_resnet50_200ep"]
    assert " none (TOFU) " in rows["sslight_resnet18_dino_200ep"]


def test_a_record_of_a_released_checkpoint_says_what_its_sha256_was_checked_against(
    monkeypatch, tmp_path, capsys
):
    """A real `evaluate knn` of a fetched release: its rows say which release and how it was verified."""
    from test_evaluate import _separable_image_folder

    from lowssl.backbones import build_backbone
    from lowssl.evaluate.__main__ import main as evaluate_main

    cache = tmp_path / "cache"
    cache.mkdir()
    torch.manual_seed(0)
    torch.save(build_backbone("resnet18").state_dict(), cache / f"{ENTRY}.pth")  # saved by hand
    path = fetch(ENTRY, cache_dir=cache, progress=False)
    _separable_image_folder(tmp_path / "data")
    argv = ["knn", "--checkpoint", str(path), "--protocol", "knn_tiny", "--dataset", "imagefolder"]
    argv += ["--data-root", str(tmp_path / "data"), "--workers", "0", "--device", "cpu"]
    argv += ["--output-dir", str(tmp_path / "out"), "--records-dir", str(tmp_path / "records")]
    assert evaluate_main(argv) == 0
    details = [json.loads(row) for row in read_records(tmp_path / "records").details]
    assert details and all(
        (d["released"], d["sha256_source"]) == (ENTRY, "trust-on-first-use") for d in details
    )
    assert released.record_details(path, "0" * 64) == {}  # another file under that name: not the release
    monkeypatch.setitem(released.registry(), ENTRY, dataclasses.replace(resolve(ENTRY), sha256="a" * 64))
    assert released.record_details(path, sha256_record(path).read_text().split()[0])["sha256_source"] == (
        "published"
    )


# ---- every registry row is the row it claims (issue 25) ----------------------------------------------


def test_every_stated_accuracy_comes_from_the_page_that_publishes_the_url():
    for entry in released.registry().values():
        if entry.accuracy is not None:
            assert entry.accuracy.source.startswith(entry.source), entry.name
            assert 0 < entry.accuracy.linear_top1 < 100, entry.name


def test_a_distillation_file_claims_a_table_5_row_only_if_its_source_states_that_rows_number():
    """Before: the CompRess files (the CompRess paper's Ours-2q: README 63.0 / 61.7) claimed Table 5's
    CompRess rows, whose 65.8 / 62.6 are its Ours-1q, a model not released."""
    from lowssl.results.paper_tables import read_paper_tables

    tables = read_paper_tables()
    table5 = tables[(tables.table == 5) & (tables.metric == "linear_top1")]
    for entry in released.registry().values():
        if entry.format not in ("simreg", "compress", "seed", "disco") or entry.accuracy is None:
            continue  # SEED / DisCo state their accuracies in figures only: their notes say so
        quoted = table5[(table5.method == entry.format) & (table5.backbone == entry.arch)].value.tolist()
        claims_table5 = any(row.table == 5 for row in entry.paper)
        assert claims_table5 == (entry.accuracy.linear_top1 in quoted), (entry.name, quoted)
    compress = resolve("compress_resnet18")
    assert compress.paper == () and "Ours-2q" in compress.note and "62.6" in compress.note


def test_an_expired_signed_link_is_refused_before_any_download(monkeypatch, tmp_path, capsys):
    """Before: SEED's link, past its own se=2025-07-26, was tried and answered HTTP 403 with no reason."""
    url = (
        f"http://127.0.0.1:{_closed_port()}/seed.pth.tar?sv=2020-04-08&se=2025-07-26T03%3A08%3A00Z&sig=abc%3D"
    )
    _point_at(monkeypatch, url, source="https://github.com/jacobswan1/SEED#checkpoints-by-seed")
    assert released.main(["--cache-dir", str(tmp_path), "fetch", ENTRY, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"error: {ENTRY}: the published link expired on 2025-07-26 (its own se= field)" in err, err
    assert "find the current link on https://github.com/jacobswan1/SEED#checkpoints-by-seed" in err, err
    assert str(tmp_path / f"{ENTRY}.pth") in err and "cannot download" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_the_seed_link_is_the_readme_s_current_one():
    expiry = released.link_expiry(resolve("seed_resnet18_swav_r50w2").url)
    assert expiry is not None and expiry.date().isoformat() == "2031-11-04"
    assert released.link_expiry(resolve("mocov2_resnet50_800ep").url) is None  # not a signed link
