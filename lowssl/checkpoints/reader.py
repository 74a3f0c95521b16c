"""Reading a pre-training checkpoint of any supported layout: one read, backbone weights under
torchvision / timm names, what trained it, and an account of every key (layouts: docs/checkpoints.md).

Keys are mapped by NAME, never by position: the authors' own loaders zip file keys with model keys in
order, which silently loads the wrong tensors when the order differs (docs/checkpoints.md, "Reading a
checkpoint"). Every key of the file is accounted for: loaded, unexpected (a backbone key the model
does not have, or has with another shape), or dropped (with the rule that dropped it); every backbone
key the model has and the file lacks is missing.

Detection (when no format is forced): every format (:mod:`lowssl.checkpoints.formats`) reads the
file. A format *fits* when the keys under its backbone prefix are mostly names (and shapes) of a
registered backbone. Among the fitting formats, the one that explains the most keys (backbone keys of
that backbone, keys it knows to drop, the other branch) minus the keys it cannot explain wins.
Layouts that share a prefix can tie: MoCo, DisCo, BINGO and SEED's alternative layout all keep the
query encoder under ``module.encoder_q.`` in ``state_dict``, and DINO's backbone-only files are plain
torchvision / timm state dicts. When the tied formats read exactly the same tensors into the same
names, the first registered wins (``moco`` for the MoCo family, ``torchvision`` / ``timm`` for flat
files) and the report names the others: the backbone is the same whichever it is. A tie that would
load different tensors is an error asking for ``--format``.

Loading is weights-only (``lowssl.io.load_checkpoint``); see
:data:`lowssl.checkpoints.formats.SAFE_GLOBALS` for the only non-tensor classes allowed without
``trust``.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lowssl.backbones import available, build_backbone, get_spec
from lowssl.checkpoints import schema
from lowssl.checkpoints.formats import (
    CNN_AND_VIT,
    SAFE_GLOBALS,
    Branch,
    CheckpointFormat,
    CheckpointLayoutError,
    formats,
    get_format,
)
from lowssl.io import load_checkpoint, sha256_file


@dataclass
class OpenedCheckpoint:
    """A checkpoint read once: the backbone state dict of one branch, what trained it, and the account
    of every key (the load report)."""

    path: Path
    state_dict: dict[str, Tensor]  # torchvision / timm names -> the file's tensors (not copied)
    format: str
    arch: str
    branch: str
    loaded: int
    missing: list[str]  # backbone keys of `arch` the file does not provide
    unexpected: list[str]  # backbone keys of the file `arch` does not have (or has with another shape)
    dropped: list[str]  # the file's other keys ("container/key"): heads, queues, other branches
    checkpoint_sha256: str
    head_state: dict[str, Tensor] | None  # the branch's projection head (e.g. mlp.*), if the file has one
    provenance: schema.Provenance
    notes: list[str] = field(default_factory=list)
    matched_formats: list[str] = field(default_factory=list)  # formats that fit equally; format first
    reshaped: list[str] = field(default_factory=list)  # "name (file shape) vs (arch shape)", of `unexpected`
    non_finite: list[str] = field(default_factory=list)  # loaded backbone tensors holding NaN or inf
    best_arch: str | None = None  # the registered backbone the file's keys fit best, where not `arch`

    def summary(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "arch": self.arch,
            "branch": self.branch,
            "loaded": self.loaded,
            "missing": self.missing,
            "unexpected": self.unexpected,
        }

    def require_loadable(self, allow_missing: bool = False) -> None:
        """Refuse weights that would silently make another network: every stage that loads a backbone
        (evaluate, semisup, detection convert, export) calls this first.

        - backbone keys ``arch`` does not have, or has with another shape: the file holds another
          architecture (ResNet34 weights read as a ResNet18 fill its 120 keys and leave 96 behind);
        - backbone keys of ``arch`` the file lacks, unless ``allow_missing``: they would keep their
          random initialisation;
        - NaN or inf in a backbone tensor: every feature would be meaningless.

        Keys the format knows are not backbone (heads, projectors, queues, other branches) are never
        an error: they are ``dropped``."""
        where = f"{self.path} ({self.format}, branch {self.branch})"
        problems = []
        foreign = [name for name in self.unexpected if name not in backbone_key_shapes(self.arch)]
        if foreign:
            problems.append(
                f"{len(foreign)} backbone keys that {self.arch} does not have: {_first(foreign, 5)}"
            )
        if self.reshaped:
            problems.append(
                f"{len(self.reshaped)} backbone keys with another shape than in {self.arch}: "
                f"{_first(self.reshaped, 5)}"
            )
        if self.missing and not allow_missing:
            problems.append(
                f"lacks {len(self.missing)} backbone keys of {self.arch}: {_first(self.missing, 5)} "
                "(missing keys would keep their random initialisation)"
            )
        if problems:
            fix = (
                f"its keys fit {self.best_arch}: pass --arch {self.best_arch}"
                if self.best_arch
                else "check --arch and --format"
            )
            raise CheckpointLayoutError(
                f"{where} does not hold a {self.arch}: {'; '.join(problems)}; {fix} "
                f"(python -m lowssl.evaluate inspect --checkpoint {self.path} shows what the file holds)"
            )
        if self.non_finite:
            raise CheckpointLayoutError(
                f"{where}: {len(self.non_finite)} of its {self.loaded} backbone tensors hold NaN or inf (first: "
                f"{self.non_finite[0]}), so every feature would be meaningless; use a checkpoint saved "
                "before the training diverged"
            )

    def build_backbone(self, allow_missing: bool = False) -> nn.Module:
        """``build_backbone(arch)`` with these weights, after :meth:`require_loadable`."""
        self.require_loadable(allow_missing)
        model = build_backbone(self.arch)
        model.load_state_dict(self.state_dict, strict=False)  # strict but for `missing` (checked above)
        return model


def _first(names: list[str], count: int) -> str:
    """The first ``count`` of ``names``, comma-separated, "..." where there are more."""
    return ", ".join(names[:count]) + (" ..." if len(names) > count else "")


@cache
def backbone_key_shapes(arch: str) -> dict[str, torch.Size]:
    """State-dict names and shapes of ``build_backbone(arch)``, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = build_backbone(arch)
    return {key: value.shape for key, value in model.state_dict().items()}


@dataclass
class _Reading:
    """One format's reading of a checkpoint for one branch."""

    backbone: dict[str, Tensor]  # torchvision / timm name -> tensor
    sources: dict[str, str]  # torchvision / timm name -> the file key it came from
    dropped: dict[str, str]  # file key -> the rule that dropped it
    unrecognised: list[str]  # file keys no rule of the format explains


def _tensors(checkpoint: Mapping, container: str | None) -> dict[str, Tensor] | None:
    """The tensors of a state dict in the file (non-tensor entries are metadata), None if absent."""
    value = checkpoint if container is None else checkpoint.get(container)
    if not isinstance(value, Mapping):
        return None
    return {key: item for key, item in value.items() if isinstance(key, str) and isinstance(item, Tensor)}


def _qualified(container: str | None, key: str) -> str:
    return key if container is None else f"{container}/{key}"


def _longest_prefix(key: str, prefixes: tuple[str, ...]) -> str | None:
    matching = [prefix for prefix in prefixes if key.startswith(prefix)]
    return max(matching, key=len) if matching else None


def _other_branch_rule(fmt: CheckpointFormat, branch: str, container: str | None, key: str) -> str | None:
    """The prefix of another branch (a teacher, a key encoder) that ``key`` falls under, if any."""
    for name, other in fmt.branches.items():
        if name != branch and other.container == container:
            prefix = _longest_prefix(key, other.prefixes)
            if prefix is not None:
                return f"branch {name}: {_qualified(container, prefix)}*"
    return None


def _read(checkpoint: Mapping, fmt: CheckpointFormat, branch: str) -> _Reading | None:
    """Sort every tensor of the format's containers into backbone / dropped / unrecognised."""
    selected = fmt.branches[branch]
    if not _tensors(checkpoint, selected.container):
        return None
    stripped: dict[str, Tensor] = {}
    stripped_sources: dict[str, str] = {}
    dropped: dict[str, str] = {}
    unrecognised: list[str] = []
    for container in dict.fromkeys(b.container for b in fmt.branches.values()):
        for key, value in (_tensors(checkpoint, container) or {}).items():
            qualified = _qualified(container, key)
            rule = _longest_prefix(key, fmt.drop)
            if rule is not None:
                dropped[qualified] = f"{_qualified(container, rule)}*"
                continue
            prefix = _longest_prefix(key, selected.prefixes) if container == selected.container else None
            if prefix is not None:
                name = key[len(prefix) :]
                if name in stripped:
                    raise CheckpointLayoutError(
                        f"format {fmt.name}: {qualified} and {stripped_sources[name]} "
                        f"are both backbone key '{name}'"
                    )
                stripped[name], stripped_sources[name] = value, qualified
                continue
            other = _other_branch_rule(fmt, branch, container, key)
            if other is not None:
                dropped[qualified] = other
            else:
                unrecognised.append(qualified)
    names = fmt.rename(list(stripped)) if fmt.rename else {name: name for name in stripped}
    if len(set(names.values())) != len(names):
        raise CheckpointLayoutError(f"format {fmt.name}: two backbone keys map to the same name")
    return _Reading(
        backbone={names[name]: value for name, value in stripped.items()},
        sources={names[name]: stripped_sources[name] for name in stripped},
        dropped=dropped,
        unrecognised=unrecognised,
    )


def _arch_matches(backbone: Mapping[str, Tensor], arch: str) -> int:
    shapes = backbone_key_shapes(arch)
    return sum(1 for name, value in backbone.items() if shapes.get(name) == value.shape)


def infer_arch(backbone: Mapping[str, Tensor], families: tuple[str, ...] = CNN_AND_VIT) -> tuple[str, int]:
    """The registered backbone whose names and shapes match the most keys, fewest missing on ties.

    E.g. ``features.18.0.weight`` only exists in MobileNetV2; ResNet depth shows in the block indices
    and basic vs bottleneck in ``conv3``; ViT width in the shape of ``cls_token`` / ``pos_embed``.
    A ResNet18 file lacking ``layer4`` still matches ResNet18 best (ResNet34 would miss more).
    """
    candidates = [arch for arch in available() if get_spec(arch).family in families]
    scored = [(_arch_matches(backbone, arch), -len(backbone_key_shapes(arch)), arch) for arch in candidates]
    matched, _, arch = max(scored, key=lambda item: item[:2])
    if 2 * matched < len(backbone):
        raise CheckpointLayoutError(
            f"could not infer the architecture: the best candidate, {arch}, matches only {matched} of "
            f"{len(backbone)} backbone keys by name and shape; pass --arch (one of {', '.join(candidates)})"
        )
    return arch, matched


def _describe_keys(checkpoint: Mapping, limit: int = 20) -> str:
    """One line naming what the file holds, for errors: its tensors (first ``limit``) and other keys."""
    tensors, others = [], []
    for key, value in checkpoint.items():
        if isinstance(value, Tensor):
            tensors.append(str(key))
        else:
            others.append(str(key))
            if isinstance(value, Mapping):
                tensors.extend(f"{key}/{inner}" for inner, item in value.items() if isinstance(item, Tensor))
    return (
        f"tensor keys found (first {min(limit, len(tensors))} of {len(tensors)}): "
        f"{', '.join(tensors[:limit]) or 'none'}; other top-level keys: {', '.join(others[:limit]) or 'none'}"
    )


def _fit(checkpoint: Mapping, fmt: CheckpointFormat) -> tuple[int, _Reading] | None:
    """(score, reading) if the format's backbone keys are mostly those of one of its backbones."""
    reading = _read(checkpoint, fmt, fmt.default_branch)
    if reading is None or not reading.backbone:
        return None
    try:
        _, matched = infer_arch(reading.backbone, fmt.families)
    except CheckpointLayoutError:
        return None
    explained = matched + len(reading.dropped)
    unexplained = len(reading.backbone) - matched + len(reading.unrecognised)
    return explained - unexplained, reading


def detect_format(checkpoint: Mapping) -> tuple[CheckpointFormat, list[str], list[str]]:
    """(format, formats that fit equally with it first, notes); see the module docstring."""
    fits = [(fmt, fit) for fmt in formats() if (fit := _fit(checkpoint, fmt)) is not None]
    if not fits:
        raise CheckpointLayoutError(
            f"no known checkpoint format fits this file ({_describe_keys(checkpoint)}); "
            f"known formats: {', '.join(fmt.name for fmt in formats())}; pass --format to force one"
        )
    best = max(score for _, (score, _) in fits)
    tied = [(fmt, reading) for fmt, (score, reading) in fits if score == best]
    chosen, chosen_reading = tied[0]
    others = [fmt.name for fmt, _ in tied[1:]]
    if any(reading.sources != chosen_reading.sources for _, reading in tied[1:]):
        raise CheckpointLayoutError(
            f"ambiguous checkpoint: formats {', '.join([chosen.name, *others])} fit equally "
            f"well but read different tensors; pass --format ({_describe_keys(checkpoint)})"
        )
    notes = []
    if others:
        notes.append(
            f"the keys fit {', '.join(others)} as well as {chosen.name}: they read the same tensors "
            f"under the same names, so the first registered, {chosen.name}, is reported "
            "(shared layouts: docs/checkpoints.md, 'Reading a checkpoint')"
        )
    return chosen, [chosen.name, *others], notes


def _recorded_arch(checkpoint: Mapping, path: tuple[str, ...]) -> Any:
    """The architecture name the file records (a dict path, or attributes of an argparse.Namespace)."""
    if not path:
        return None
    value: Any = checkpoint
    for part in path:
        value = value.get(part) if isinstance(value, Mapping) else getattr(value, part, None)
    return value


def _head_state(checkpoint: Mapping, branch: Branch) -> dict[str, Tensor] | None:
    for container, prefix in branch.heads:
        tensors = _tensors(checkpoint, container) or {}
        head = {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}
        if head:
            return head
    return None


def _count_by_rule(dropped: Mapping[str, str]) -> str:
    counts = collections.Counter(dropped.values())
    return ", ".join(f"{rule} ({count})" for rule, count in counts.items())


def open_checkpoint(
    path: str | Path,
    *,
    fmt: str | None = None,
    branch: str | None = None,
    arch: str | None = None,
    trust: bool = False,
) -> OpenedCheckpoint:
    """Read the checkpoint at ``path`` once: the backbone of ``branch`` under torchvision / timm names,
    what trained it, and where every key went.

    ``fmt`` forces a format (default: detected); ``arch`` forces the architecture (default: the one the
    file records, for formats that record one, else inferred from the keys); ``trust`` loads the file
    as a full pickle, which can run code: only for files whose origin you trust.
    """
    checkpoint = load_checkpoint(path, trust=trust, safe_globals=SAFE_GLOBALS)
    if not isinstance(checkpoint, Mapping):
        raise CheckpointLayoutError(
            f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict or state dict"
        )
    if fmt is None:
        chosen, matched_formats, notes = detect_format(checkpoint)
    else:
        chosen, matched_formats, notes = get_format(fmt), [fmt], [f"format {fmt} forced"]
    branch = branch or chosen.default_branch
    if branch not in chosen.branches:
        raise CheckpointLayoutError(
            f"format {chosen.name} has no branch '{branch}'; branches: {', '.join(chosen.branches)}"
        )
    selected = chosen.branches[branch]
    reading = _read(checkpoint, chosen, branch)
    if reading is None or not reading.backbone:
        raise CheckpointLayoutError(
            f"format {chosen.name}, branch {branch}: no backbone keys (container {selected.container!r}, "
            f"prefixes {', '.join(map(repr, selected.prefixes))}) in {path} ({_describe_keys(checkpoint)})"
        )
    if chosen.remark:
        notes.append(chosen.remark)

    recorded = _recorded_arch(checkpoint, chosen.arch_field)
    if arch is not None:
        if arch not in available():
            raise CheckpointLayoutError(
                f"unknown architecture '{arch}'; registered: {', '.join(available())}"
            )
        notes.append(f"architecture {arch} given")
    elif recorded in available() and 2 * _arch_matches(reading.backbone, recorded) >= len(reading.backbone):
        arch = recorded
        notes.append(f"architecture {arch} from the file's {'.'.join(chosen.arch_field)}")
    else:  # a third-party file's own arch field may name something else (a teacher, an unregistered name)
        arch, matched = infer_arch(reading.backbone, chosen.families)
        notes.append(
            f"architecture {arch} inferred from the keys ({matched} of {len(reading.backbone)} "
            "backbone keys match by name and shape)"
        )
        if recorded is not None:
            notes.append(
                f"the file records architecture {recorded!r}, which is not a registered backbone "
                "matching its keys"
            )

    expected = backbone_key_shapes(arch)
    state_dict: dict[str, Tensor] = {}
    unexpected: list[str] = []
    reshaped: list[str] = []
    for name, value in reading.backbone.items():
        if name in expected and expected[name] == value.shape:
            state_dict[name] = value
            continue
        unexpected.append(name)
        if name in expected:
            reshaped.append(f"{name} {tuple(value.shape)} vs {tuple(expected[name])}")
    if reshaped:
        notes.append(
            f"{len(reshaped)} backbone keys have another shape in the file than in {arch} (counted missing "
            f"and unexpected): {_first(reshaped, 5)}"
        )
    missing = [name for name in expected if name not in state_dict]
    best_arch = None
    if missing or unexpected:
        try:
            best_arch = infer_arch(reading.backbone, chosen.families)[0]
        except CheckpointLayoutError:  # the keys fit no registered backbone: no --arch to suggest
            pass
        best_arch = best_arch if best_arch != arch else None
        if best_arch:
            notes.append(f"the file's backbone keys fit {best_arch} best")
    non_finite = [
        name
        for name, value in state_dict.items()
        if value.is_floating_point() and not torch.isfinite(value).all()
    ]
    if non_finite:
        notes.append(f"{len(non_finite)} backbone tensors hold NaN or inf: {_first(non_finite, 5)}")
    if reading.dropped:
        notes.append(f"dropped {len(reading.dropped)} non-backbone keys: {_count_by_rule(reading.dropped)}")
    if reading.unrecognised:
        notes.append(
            f"{len(reading.unrecognised)} keys fit no rule of format {chosen.name} and were not loaded: "
            f"{', '.join(reading.unrecognised[:10])}{' ...' if len(reading.unrecognised) > 10 else ''}"
        )
    return OpenedCheckpoint(
        path=Path(path),
        state_dict=state_dict,
        format=chosen.name,
        arch=arch,
        branch=branch,
        loaded=len(state_dict),
        missing=missing,
        unexpected=unexpected,
        dropped=[*reading.dropped, *reading.unrecognised],
        checkpoint_sha256=sha256_file(path),
        head_state=_head_state(checkpoint, selected),
        provenance=schema.provenance(checkpoint) if chosen.name == "lowssl" else schema.Provenance(),
        notes=notes,
        matched_formats=matched_formats,
        reshaped=reshaped,
        non_finite=non_finite,
        best_arch=best_arch,
    )
