"""Released checkpoints by name (lowssl/released.py): the registry's data, and fetch against a local
HTTP server on 127.0.0.1 (Range requests supported), never the real network."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import re
import socket
import threading
from pathlib import Path

import pytest
import torch

from lowssl import released
from lowssl.backbones import available
from lowssl.checkpoints import get_format
from lowssl.released import ReleasedError, fetch, resolve

# dino_resnet50 is a DINO backbone-only file: a flat state dict under torchvision names.
ENTRY = "dino_resnet50"


def _tiny_checkpoint() -> bytes:
    """A few ResNet50 stem tensors under torchvision names, as a backbone-only DINO file holds them."""
    generator = torch.Generator().manual_seed(0)
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
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no .partial left
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
    import results.evaluate_checkpoint as evaluate_checkpoint

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
    from results.evaluate_checkpoint import main

    assert main(["sslight_resnet18_dino_200"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Did you mean 'sslight_resnet18_dino_200ep'?" in err


def test_the_doc_lists_every_entry():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "released.md").read_text()
    assert [name for name in released.registry() if f"`{name}`" not in doc] == []
