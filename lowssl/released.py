"""Released checkpoints by name: the registry (``lowssl/released.yaml``) and a verified download into a
cache (docs/released.md).

:func:`fetch` downloads into ``$LOWSSL_CACHE`` (default ``~/.cache/lowssl/checkpoints``) as
``<name>.pth``: through a ``.partial`` file that a later call resumes with an HTTP Range request, then
checked (the published SHA-256 / MD5 prefix where there is one, then that the bytes are a checkpoint
the entry's format reads) and renamed into place, so the cache holds only verified files. No source
publishes a SHA-256 today, so the first fetch records the file's own beside it (``<name>.pth.sha256``,
trust-on-first-use) and every later use checks the file against that record. Without a network it
says where to put a file downloaded by hand. Standard library (urllib) and tqdm only;
torch and the checkpoint readers (every backbone) are imported by the checks that need them, so that
``list`` answers at once.

    python -m lowssl.released list
    python -m lowssl.released fetch sslight_resnet18_dino_200ep
    python -m lowssl.released table    # how each cached file reads, trust off (docs/released.md)
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from pathlib import Path

import yaml
from tqdm import tqdm

from lowssl.errors import BadInput

CACHE_ENV = "LOWSSL_CACHE"
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60
FIELDS = ("url", "source", "format", "arch", "branch", "sha256", "md5_prefix", "accuracy", "paper", "note")


class ReleasedError(BadInput, RuntimeError):
    """A released checkpoint could not be named, downloaded or verified; the message says what to do."""


@dataclass(frozen=True)
class PaperRow:
    table: int
    row: str

    def __str__(self) -> str:
        return f"Table {self.table}: {self.row}"


@dataclass(frozen=True)
class Accuracy:
    """The ImageNet linear top-1 a page states for a released file, and where it states it."""

    linear_top1: float
    source: str


@dataclass(frozen=True)
class Released:
    """One published checkpoint file (fields: the header of ``lowssl/released.yaml``)."""

    name: str
    url: str
    source: str
    format: str
    arch: str
    branch: str
    sha256: str | None
    md5_prefix: str | None
    accuracy: Accuracy | None
    paper: tuple[PaperRow, ...]
    note: str

    @property
    def filename(self) -> str:
        """The file's name in the cache; published names differ by host (a Drive id has none)."""
        return f"{self.name}.pth"

    @property
    def sha256_source(self) -> str:
        """What a cached file's SHA-256 is checked against: the authors' published digest, or the one
        recorded when this cache first fetched it (which proves it unchanged since, not genuine)."""
        return "published" if self.sha256 else "trust-on-first-use"


def _entry(name: str, data: dict) -> Released:
    if set(data) != set(FIELDS):
        raise ValueError(f"lowssl/released.yaml, '{name}': fields {sorted(data)}; expected {list(FIELDS)}")
    paper = tuple(PaperRow(int(row["table"]), str(row["row"])) for row in data["paper"])
    accuracy = data["accuracy"] and Accuracy(
        float(data["accuracy"]["linear_top1"]), str(data["accuracy"]["source"])
    )
    return Released(name=name, **{**data, "paper": paper, "accuracy": accuracy})


@cache
def registry() -> dict[str, Released]:
    """Every released checkpoint by name, in the order of ``lowssl/released.yaml``."""
    text = resources.files("lowssl").joinpath("released.yaml").read_text()
    return {name: _entry(name, data) for name, data in yaml.safe_load(text)["checkpoints"].items()}


def resolve(name: str) -> Released:
    known = registry()
    if name not in known:
        # A name without its suffix (teacher, epochs) stands for every entry it starts; difflib alone
        # would rank a short near-miss ('dino_resnet50' for 'disco_resnet18') above them.
        close = [known_name for known_name in known if known_name.startswith(name)]
        close = close or difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(known_name) for known_name in close)}?" if close else ""
        raise ReleasedError(
            f"no released checkpoint is named '{name}'.{hint} List them: python -m lowssl.released list"
        )
    return known[name]


def default_cache_dir() -> Path:
    """``$LOWSSL_CACHE``, else ``~/.cache/lowssl/checkpoints``; read at each call."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lowssl" / "checkpoints")


_HF_BLOB = re.compile(r"^(https://huggingface\.co/.+?)/blob/(.+)$")
_DRIVE_FILE = re.compile(r"^https://drive\.google\.com/file/d/([\w-]+)")
_DRIVE_FOLDER = "https://drive.google.com/drive/folders/"


def download_url(entry: Released) -> str | None:
    """Where the file's bytes are, from the published link: a Hugging Face ``blob`` page serves them
    under ``resolve``, a Google Drive ``view`` link under ``uc?export=download``; a Drive folder has no
    single file to download (None: by hand only). Drive answers a large file with an HTML confirmation
    page instead: :func:`fetch` then refuses it as not a checkpoint and says how to download by hand."""
    if entry.url.startswith(_DRIVE_FOLDER):
        return None
    if match := _HF_BLOB.match(entry.url):
        return f"{match[1]}/resolve/{match[2]}"
    if match := _DRIVE_FILE.match(entry.url):
        return f"https://drive.google.com/uc?export=download&id={match[1]}"
    return entry.url


def link_expiry(url: str) -> datetime | None:
    """When a signed link stops working, as it states itself: an Azure shared-access signature
    (``sig=``) carries its expiry in ``se=`` (UTC). None for any other link."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    if "sig" not in query or "se" not in query:
        return None
    expiry = datetime.fromisoformat(query["se"][0])
    return expiry if expiry.tzinfo else expiry.replace(tzinfo=UTC)


def _by_hand(entry: Released, target: Path) -> str:
    return (
        f"download {entry.url} by hand (published on {entry.source}) and save it as {target} "
        f"(the cache: ${CACHE_ENV}, default ~/.cache/lowssl/checkpoints), then run this again"
    )


def _download(url: str, partial: Path, label: str, progress: bool) -> None:
    """Append ``url``'s bytes to ``partial``, from its current size on (HTTP Range) when it exists; a
    server that ignores the Range sends the whole file, which replaces the partial one."""
    offset = partial.stat().st_size if partial.is_file() else 0
    headers = {"User-Agent": "lowssl", **({"Range": f"bytes={offset}-"} if offset else {})}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # nothing past the end: the partial file is whole already
            return
        raise
    with response:
        if offset and response.status != 206:
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length else None
        with (
            open(partial, "ab" if offset else "wb") as file,
            tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, desc=label, disable=not progress
            ) as bar,
        ):
            while chunk := response.read(CHUNK_BYTES):
                file.write(chunk)
                bar.update(len(chunk))
            file.flush()
            os.fsync(file.fileno())


def _digests(path: Path) -> tuple[str, str]:
    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            sha256.update(chunk)
            md5.update(chunk)
    return sha256.hexdigest(), md5.hexdigest()


def _check_digests(entry: Released, sha256: str, md5: str) -> None:
    if entry.sha256 is not None and sha256 != entry.sha256.lower():
        raise ReleasedError(f"{entry.name}: SHA-256 mismatch, expected {entry.sha256}, got {sha256}")
    if entry.md5_prefix is not None and not md5.startswith(entry.md5_prefix.lower()):
        raise ReleasedError(
            f"{entry.name}: MD5 mismatch, expected a digest starting {entry.md5_prefix}, got {md5}"
        )


def sha256_record(target: Path) -> Path:
    """Where the cache keeps the SHA-256 of ``target`` seen at its first fetch, as ``sha256sum`` writes
    it (``sha256sum -c`` checks it)."""
    return target.with_name(target.name + ".sha256")


def _recorded_sha256(entry: Released, target: Path) -> str | None:
    record = sha256_record(target)
    if not record.is_file():
        return None
    fields = record.read_text().split()
    if not fields or not re.fullmatch(r"[0-9a-f]{64}", fields[0]):
        raise ReleasedError(
            f"{entry.name}: {record} is not a SHA-256 record; delete it and {target}, then fetch again"
        )
    return fields[0]


def _record_sha256(target: Path, sha256: str) -> None:
    from lowssl.io import atomic_write_text

    atomic_write_text(sha256_record(target), f"{sha256}  {target.name}\n")


def record_details(checkpoint: str | Path | None, sha256: str) -> dict[str, str]:
    """What a result record says about its checkpoint when it is a released one from the cache: the
    name, and what its SHA-256 was checked against. Empty for any other file, and for a cached file
    whose digest ``sha256`` is not the one recorded at its first fetch (it is no longer that release)."""
    if not checkpoint:
        return {}
    path = Path(checkpoint)
    entry = registry().get(path.name.removesuffix(".pth")) if path.name.endswith(".pth") else None
    try:
        recorded = _recorded_sha256(entry, path) if entry else None
    except ReleasedError:
        return {}
    if recorded != sha256:
        return {}
    return {"released": entry.name, "sha256_source": entry.sha256_source}


def _looks_like_markup(path: Path) -> bool:
    with open(path, "rb") as file:
        return file.read(512).lstrip().startswith(b"<")


def _check_is_checkpoint(entry: Released, path: Path, origin: str, target: Path) -> None:
    """The bytes are a torch archive or pickle at all: an HTML page (an error or sign-in page, Drive's
    confirmation page) or any other file is refused before anything unpickles it."""
    from lowssl.io import CheckpointError, pickle_imports

    try:
        pickle_imports(path)
    except CheckpointError as error:
        what = "an HTML/XML page" if _looks_like_markup(path) else f"not a checkpoint ({error})"
        raise ReleasedError(f"{entry.name}: {origin} is {what}; {_by_hand(entry, target)}") from error


def _check_format(entry: Released, path: Path, trust: bool) -> None:
    """The entry's format reads a backbone of its architecture from the file."""
    from lowssl.checkpoints import CheckpointLayoutError, open_checkpoint
    from lowssl.io import CheckpointError

    try:
        opened = open_checkpoint(path, fmt=entry.format, branch=entry.branch, arch=entry.arch, trust=trust)
    except (CheckpointLayoutError, CheckpointError) as error:
        raise ReleasedError(f"{entry.name}: not a '{entry.format}' checkpoint: {error}") from error
    if opened.loaded == 0:
        raise ReleasedError(
            f"{entry.name}: the file holds no {entry.arch} backbone key under format '{entry.format}'"
        )


def fetch(name: str, cache_dir: str | Path | None = None, progress: bool = True, trust: bool = False) -> Path:
    """The verified file of released checkpoint ``name`` in the cache, downloaded first if absent.

    A file already in the cache (downloaded earlier, or saved there by hand) is checked against the
    published digests and for being a checkpoint; a download is also read with the entry's format. A
    download that fails a check is deleted, nothing of it kept; one cut short stays as ``.partial`` and
    the next call resumes it. ``trust`` is :func:`lowssl.checkpoints.open_checkpoint`'s.

    Trust-on-first-use: the SHA-256 of the first file that passes is recorded beside it
    (:func:`sha256_record`); a cached file or a later download with another digest is refused, the
    cached file kept for the user to look at.
    """
    entry = resolve(name)
    target = Path(cache_dir or default_cache_dir()) / entry.filename
    if target.is_file():
        sha256, md5 = _digests(target)
        try:
            _check_digests(entry, sha256, md5)
            _check_is_checkpoint(entry, target, f"the cached file {target}", target)
        except ReleasedError as error:
            target.unlink()
            raise ReleasedError(f"{error} (the cached file was removed)") from error
        recorded = _recorded_sha256(entry, target)
        if recorded is None:  # saved into the cache by hand: this is its first use
            _record_sha256(target, sha256)
        elif sha256 != recorded:
            raise ReleasedError(
                f"{entry.name}: the cached file {target} has SHA-256 {sha256}, but {recorded} was recorded "
                f"when it was first fetched ({sha256_record(target)}, trust-on-first-use): it was replaced "
                f"or damaged since. Delete it and fetch again: rm {target} && python -m lowssl.released "
                f"fetch {entry.name}"
            )
        return target
    url = download_url(entry)
    if url is None:
        raise ReleasedError(f"{entry.name} is published as a folder, not a file: {_by_hand(entry, target)}")
    expiry = link_expiry(entry.url)
    if expiry is not None and expiry <= datetime.now(UTC):  # the host would answer 403
        raise ReleasedError(
            f"{entry.name}: the published link expired on {expiry:%Y-%m-%d} (its own se= field); find the "
            f"current link on {entry.source}, download it by hand and save it as {target}, then run this "
            "again (and update the url in lowssl/released.yaml)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    try:
        _download(url, partial, entry.name, progress)
    except urllib.error.HTTPError as error:
        raise ReleasedError(
            f"{entry.name}: {url} answered HTTP {error.code}; {_by_hand(entry, target)}"
        ) from error
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        # offline, refused, timed out, cut short: the .partial file stays for the next call to resume
        reason = getattr(error, "reason", error)
        raise ReleasedError(
            f"{entry.name}: cannot download {url} ({reason}); {_by_hand(entry, target)}"
        ) from error
    sha256, md5 = _digests(partial)
    recorded = None
    try:
        _check_digests(entry, sha256, md5)
        recorded = _recorded_sha256(entry, target)
        if recorded not in (None, sha256):
            raise ReleasedError(
                f"{entry.name}: what {url} sent has SHA-256 {sha256}, but {recorded} was recorded when it "
                f"was first fetched ({sha256_record(target)}, trust-on-first-use): the published file "
                f"changed, or this is not it. Only if the change is expected: rm {sha256_record(target)} "
                "and fetch again"
            )
        _check_is_checkpoint(entry, partial, f"what {url} sent", target)
        _check_format(entry, partial, trust)
    except ReleasedError:
        partial.unlink()
        raise
    if recorded is None:
        _record_sha256(target, sha256)  # before the file: a cached file never lacks its record
    os.replace(partial, target)
    return target


def _published_digest(entry: Released) -> str:
    if entry.sha256:
        return "sha256"
    return "md5-prefix" if entry.md5_prefix else "none (TOFU)"


def _list(cache_dir: Path) -> None:
    print(
        f"{len(registry())} released checkpoints (lowssl/released.yaml); cache {cache_dir}; "
        "fetch one with: python -m lowssl.released fetch NAME"
    )
    print(f"{'name':42s} {'backbone':22s} {'format':14s} {'cached':7s} {'published digest':17s} paper rows")
    for entry in registry().values():
        cached = "cached" if (cache_dir / entry.filename).is_file() else "-"
        rows = "; ".join(map(str, entry.paper)) or "none (lowssl/released.yaml: its note says why)"
        print(
            f"{entry.name:42s} {entry.arch:22s} {entry.format:14s} {cached:7s} {_published_digest(entry):17s} {rows}"
        )


TABLE_COLUMNS = (
    "name",
    "format detected",
    "arch",
    "branch",
    "backbone keys loaded / missing",
    "trust needed",
    "URL from",
    "linear top-1",
    "accuracy from",
)


def layout_row(entry: Released, path: Path) -> tuple[str, ...]:
    """How the file at ``path`` reads as ``entry`` declares it, as a new user's ``evaluate inspect`` would:
    trust off, its format detected (not forced), the entry's branch; the columns of ``TABLE_COLUMNS``
    from "format detected" to "trust needed". A detected format other than the entry's is marked, and so
    is a file that only a full unpickle (trust) could open."""
    from lowssl.checkpoints import CheckpointLayoutError, open_checkpoint
    from lowssl.io import TRUST_ADVICE, CheckpointError

    try:
        opened = open_checkpoint(path, branch=entry.branch)
    except (CheckpointError, CheckpointLayoutError) as error:
        trust = "yes" if TRUST_ADVICE in str(error) else "-"
        return ("unreadable: " + " ".join(str(error).split())[:200], "-", "-", "-", trust)
    ties = [name for name in opened.matched_formats if name != opened.format]
    detected = opened.format + (f" (same tensors: {', '.join(ties)})" if ties else "")
    if entry.format not in opened.matched_formats:
        detected += f" NOT the registered {entry.format}"
    return (detected, opened.arch, opened.branch, f"{opened.loaded} / {len(opened.missing)}", "no")


def _table(cache_dir: Path) -> None:
    """A Markdown table: one row per entry, read from its cached file (``not cached`` where absent)."""
    print("| " + " | ".join(TABLE_COLUMNS) + " |")
    print("|" + "---|" * len(TABLE_COLUMNS))
    for entry in registry().values():
        path = cache_dir / entry.filename
        layout = layout_row(entry, path) if path.is_file() else ("not cached", "-", "-", "-", "-")
        accuracy = (
            (str(entry.accuracy.linear_top1), entry.accuracy.source)
            if entry.accuracy
            else ("-", "none in text")
        )
        print("| " + " | ".join((entry.name, *layout, entry.source, *accuracy)) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lowssl.released",
        description=" ".join(__doc__.split("\n\n")[0].split()),  # the first paragraph, whole
        epilog="e.g. python -m lowssl.released fetch NAME --cache-dir DIR",
    )
    cache_help = f"default ${CACHE_ENV} or ~/.cache/lowssl/checkpoints"
    parser.add_argument("--cache-dir", type=Path, help=cache_help)
    # --cache-dir after the command too (``fetch NAME --cache-dir D``); SUPPRESS: absent there, the
    # value given before the command stands
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument("--cache-dir", type=Path, default=argparse.SUPPRESS, help=cache_help)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "list",
        parents=[after],
        help="every released checkpoint: name, backbone, format, cached, published digest, paper rows",
    )
    commands.add_parser(
        "table",
        parents=[after],
        help="every entry's cached file read as `evaluate inspect` reads it (trust off): format detected, "
        "arch, branch, keys loaded / missing, trust needed, and where its URL and accuracy come from",
    )
    get = commands.add_parser(
        "fetch", parents=[after], help="download (or find in the cache) and verify; prints the path"
    )
    get.add_argument("name")
    get.add_argument("--no-progress", action="store_true")
    get.add_argument(
        "--trust-checkpoint", action="store_true", help="read it as a full pickle, which can run code"
    )
    args = parser.parse_args(argv)
    cache_dir = args.cache_dir or default_cache_dir()
    if args.command == "list":
        _list(cache_dir)
        return 0
    if args.command == "table":
        _table(cache_dir)
        return 0
    try:
        print(fetch(args.name, cache_dir, progress=not args.no_progress, trust=args.trust_checkpoint))
    except ReleasedError as error:
        print("error: " + " ".join(str(error).split()), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
