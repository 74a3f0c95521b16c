"""Each run's faster exact memory format, measured on the machine at hand and kept per machine.

channels_last (NHWC) and the contiguous NCHW layout compute the same convolutions (the same losses
to float rounding, ``tests/test_perf.py``) at different speeds, and which is faster depends on the
backbone, the shapes and the CPU or GPU: measured on one 2-core CPU, MobileNetV2's DINO step ran
1.9x faster in channels_last and ResNet18's 4 % slower (docs/benchmarks.md). So a run whose
``channels_last`` is ``"auto"`` times a few steps of each format on its own shapes
(:func:`choose_memory_format`), takes the faster and says so in one line; true / false always win
and measure nothing; a ViT has no 4-d activations to lay out and stays contiguous.

A measurement is kept in ``<home>/cache/perf.json`` (lowssl.paths.home), keyed by the machine (CPU
model, device, torch version, threads), the task, backbone, precision and shapes, and reused by
every later run of that key: a tiny run pays it once per machine. Two runs measuring at once may
each write the file; the last write wins and the other's entry is measured again some later time.
Under torchrun, rank 0 reads the cache and tells every rank whether to measure; then all ranks time
the steps together (a step may hold collectives: DINO's centre all-reduce) and rank 0's timings,
hence its choice, go to every rank, so all run the same format.
"""

from __future__ import annotations

import copy
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from lowssl.io import atomic_write_text
from lowssl.paths import home
from lowssl.progress import say

CACHE_VERSION = 1
FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
WARMUP = 1  # untimed steps of each format first (allocator, oneDNN / cuDNN kernel choice)
REPEATS = 2  # timed steps of each format, taking turns; the fastest of each counts


@dataclass(frozen=True)
class MemoryFormatChoice:
    """The memory format a run uses, how it was chosen and, where measured, each format's images/s."""

    name: str  # "contiguous" or "channels_last"
    how: str  # "set" (true / false in the config), "measured", "cached" or "not a CNN"
    measured: dict[str, float] | None = None  # images/s per format, where measured or cached

    @property
    def channels_last(self) -> bool:
        return self.name == "channels_last"

    @property
    def memory_format(self) -> torch.memory_format:
        return FORMATS[self.name]

    def details(self) -> dict:
        """What every record's ``details`` keeps of the choice."""
        return {
            "memory_format": self.name,
            "memory_format_choice": self.how,
            "memory_format_measured": self.measured,
        }

    def line(self, what: str) -> str:
        if self.measured is None:
            return f"{what}: memory format {self.name} ({self.how})"
        speeds = ", ".join(f"{name} {speed:.1f}" for name, speed in self.measured.items())
        cached = " (cached)" if self.how == "cached" else ""
        return f"{what}: memory format {self.name}, the faster measured here ({speeds} img/s){cached}"


def machine(device: torch.device) -> dict:
    """What a measurement holds for: the CPU model, the device, torch's version and its threads."""
    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def cache_path() -> Path:
    return home() / "cache" / "perf.json"


def _read_cache(path: Path) -> dict:
    """The cache's entries; a missing file is empty, a malformed one is ignored (with a warning, under
    --quiet too) and replaced by the next write."""
    if not path.exists():
        return {}
    try:
        cache = json.loads(path.read_text())
        if not isinstance(cache, dict) or cache.get("version") != CACHE_VERSION:
            raise ValueError(f"not a version-{CACHE_VERSION} lowssl performance cache")
        entries = cache["entries"]
        if not isinstance(entries, dict):
            raise ValueError("its entries are not a mapping")
        return entries
    except (OSError, ValueError, KeyError, UnicodeDecodeError) as error:
        print(f"warning: ignoring the performance cache {path} ({error}); measuring again", file=sys.stderr)
        return {}


def _cached_choice(entry) -> MemoryFormatChoice | None:
    """The choice an entry holds, or None where the entry is not one this module wrote."""
    try:
        measured = {name: float(entry["measured"][name]) for name in FORMATS}
    except (TypeError, KeyError, ValueError):
        return None
    return MemoryFormatChoice(max(measured, key=measured.get), "cached", measured)


def _time_formats(
    step_for: Callable[[torch.memory_format], Callable[[], None]], images: int, device: torch.device
) -> dict[str, float]:
    """Images/s of each format: the steps take turns (machine drift hits both alike), fastest kept."""
    steps = {name: step_for(memory_format) for name, memory_format in FORMATS.items()}
    best = dict.fromkeys(FORMATS, float("inf"))
    for repeat in range(WARMUP + REPEATS):
        for name, step in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if repeat >= WARMUP:
                best[name] = min(best[name], time.perf_counter() - start)
    return {name: round(images / seconds, 2) for name, seconds in best.items()}


@dataclass(frozen=True)
class Workload:
    """What ``auto`` times: one step of the run's work, its cache key and the images one step sees."""

    step_for: Callable[[torch.memory_format], Callable[[], None]]  # training_step / forward_pass
    key: dict  # the task, backbone, precision and shapes (the machine is added)
    images: int


def choose_memory_format(
    setting: bool | str,
    family: str,
    workload: Callable[[], Workload],
    device: torch.device,
    what: str,
    announce: bool = True,
    use_cache: bool = True,
) -> MemoryFormatChoice:
    """The memory format of a run whose config says ``setting`` (true, false or "auto").

    With "auto" and a CNN, ``workload()`` (called only then) gives one step of the run's work on its
    real shapes (forward and backward for training, forward for a feature pass), working on a copy of
    the model: its formats are timed, or read from the cache. ``what`` names the run in the printed
    line; ``announce`` False prints nothing (the ranks other than 0); ``use_cache`` False measures
    and keeps nothing (the benchmark's own check of the choice).
    """
    if isinstance(setting, bool):
        return MemoryFormatChoice("channels_last" if setting else "contiguous", "set")
    if family == "vit":
        return MemoryFormatChoice("contiguous", "not a CNN")
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    main = not distributed or dist.get_rank() == 0
    job = workload()
    path = cache_path()
    entries = _read_cache(path) if use_cache and main else {}
    key_text = json.dumps({**machine(device), **job.key}, sort_keys=True)
    choice = _cached_choice(entries.get(key_text))
    if distributed:  # rank 0's cache entry, so that every rank measures, or none does
        choice = _from_rank0(choice, device)
    if choice is None:
        # every rank times the steps together: a step may hold collectives (DINO's centre all-reduce)
        measured = _time_formats(job.step_for, job.images, device)
        if distributed:
            measured = _from_rank0(measured, device)  # rank 0's timings, so every rank picks the same
        choice = MemoryFormatChoice(max(measured, key=measured.get), "measured", measured)
        if use_cache and main:
            entries[key_text] = {"measured": measured, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            atomic_write_text(path, json.dumps({"version": CACHE_VERSION, "entries": entries}, indent=1))
    say(choice.line(what), enabled=announce)
    return choice


def _from_rank0(value, device: torch.device):
    shared = [value]
    dist.broadcast_object_list(shared, src=0, device=device if device.type == "cuda" else None)
    return shared[0]


def _inputs(shapes: Sequence[Sequence[int]], device: torch.device) -> list[torch.Tensor]:
    """Random images of ``shapes`` from a generator of their own (the run's RNG is not touched)."""
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(*shape, generator=generator).to(device) for shape in shapes]


def training_step(
    model: nn.Module,
    shapes: Sequence[Sequence[int]],
    device: torch.device,
    forward: Callable[[nn.Module, list[torch.Tensor]], torch.Tensor],
    amp_dtype: torch.dtype | None = None,
) -> Callable[[torch.memory_format], Callable[[], None]]:
    """``step_for`` of one training step: ``forward(copy, inputs)`` (the loss) and its backward, on
    a copy of ``model`` (its weights, BN statistics and buffers stay untouched) and images of
    ``shapes``; global RNG states are restored after each step."""

    def step_for(memory_format: torch.memory_format) -> Callable[[], None]:
        trial = copy.deepcopy(model).to(device, memory_format=memory_format).train()
        inputs = [x.contiguous(memory_format=memory_format) for x in _inputs(shapes, device)]

        def step() -> None:
            with torch.random.fork_rng(
                devices=[torch.cuda.current_device()] if device.type == "cuda" else []
            ):
                trial.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss = forward(trial, inputs)
                loss.float().backward()

        return step

    return step_for


def forward_pass(
    model: nn.Module, shape: Sequence[int], device: torch.device
) -> Callable[[torch.memory_format], Callable[[], None]]:
    """``step_for`` of a feature pass: ``model`` (eval mode, no gradient) on images of ``shape``."""

    def step_for(memory_format: torch.memory_format) -> Callable[[], None]:
        trial = copy.deepcopy(model).to(device, memory_format=memory_format).eval()
        (images,) = _inputs([shape], device)
        images = images.contiguous(memory_format=memory_format)

        @torch.no_grad()
        def step() -> None:
            trial(images)

        return step

    return step_for


def to_memory_format(model: nn.Module, choice: MemoryFormatChoice) -> nn.Module:
    """``model`` in the chosen format, its 4-d inputs converted on the way in (a forward pre-hook),
    so that a loop feeding it NCHW batches runs the chosen path. Contiguous: ``model`` unchanged."""
    if not choice.channels_last:
        return model
    model.to(memory_format=torch.channels_last)

    def channels_last_inputs(module: nn.Module, args: tuple) -> tuple:
        return tuple(
            x.contiguous(memory_format=torch.channels_last)
            if isinstance(x, torch.Tensor) and x.dim() == 4
            else x
            for x in args
        )

    model.register_forward_pre_hook(channels_last_inputs)
    return model
