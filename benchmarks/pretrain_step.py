"""Pre-training step throughput: each method's full step vs the bare forward+backward (the limit).

The full step is what ``pretrain/train.py`` runs per batch (multi-crop forward of student and teacher,
loss, backward, LARS/AdamW step, EMA/queue updates). The limit is the network compute that step cannot
avoid: the method's own ``forward_networks`` (student backbone and heads forward and backward on its
views, the teacher / key encoder forward on its views) with a trivial loss. The ratio step / limit is
then the overhead of the loss, EMA, queue and optimiser. ``student_only_ratio`` also reports the step
against the student's forward and backward alone (the teacher forward counted as overhead). Views are
random tensors already on the device, so the data path is excluded (``benchmarks/augmentation.py``).

    python -m lowssl.benchmarks.pretrain_step --device cuda --amp bf16 --batch 128 --global-size 224 --local-size 128

``--variants`` times the full step alone in each precision and memory format instead, the variants
taking turns, and runs lowssl.perf's ``channels_last: auto`` measurement on the same step.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from lowssl.backbones import get_spec
from lowssl.benchmarks.report import show, summary, write
from lowssl.perf import Workload, choose_memory_format, machine, training_step
from lowssl.pretrain.methods import MocoConfig, build_method, multicrop_forward
from lowssl.pretrain.optim import OptimConfig, build_optimizer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time_interleaved(steps: dict, repeats: int, warmup: int, device) -> dict[str, list[float]]:
    """Seconds per call of each step, the steps taking turns in every repeat so that machine drift
    (clock boost, other processes) hits them alike and per-repeat ratios are meaningful."""
    times = {name: [] for name in steps}
    for repeat in range(warmup + repeats):
        for name, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            if repeat >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


#: The step's precision and memory format, as the variants table names them.
VARIANTS = {
    "fp32": ("none", False),
    "channels_last": ("none", True),
    "bf16": ("bf16", False),
    "bf16+channels_last": ("bf16", True),
}


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast runs natively here: a GPU that has it, or a CPU whose oneDNN has bf16
    kernels (AVX-512 BF16 / AMX; elsewhere it is emulated and only slower)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def build_step(method_name: str, backbone: str, args, amp: str, channels_last: bool):
    """(the method, its views, a function running one full pre-training step, the autocast factory)."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    # MoCo's queue sets the size of its loss (every query against every queued key): the tiny rows
    # pass the tiny presets' length, as the crop sizes are theirs too.
    cfg = MocoConfig(queue_length=args.moco_queue) if method_name == "moco" else None
    method = build_method(method_name, backbone, cfg).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    method = method.to(memory_format=memory_format)
    family = get_spec(backbone).family
    optimizer = build_optimizer(method, OptimConfig(name="adamw" if family == "vit" else "lars"))
    views = [torch.randn(args.batch, 3, args.global_size, args.global_size, device=device)] * 2 + [
        torch.randn(args.batch, 3, args.local_size, args.local_size, device=device)
    ] * args.n_local
    views = [v.contiguous(memory_format=memory_format) for v in views]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    autocast = lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)  # noqa: E731

    def full_step():
        method.normalize_prototypes()
        with autocast():
            out = method(views, 1)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        method.cancel_frozen_gradients(1)
        optimizer.step()
        method.update_teacher(method.teacher_momentum(10, 100))

    return method, views, full_step, autocast


def measure_variants(method_name: str, backbone: str, args) -> dict:
    """Full-step images/s of each variant (fp32, channels_last, and with native bf16 the bf16 ones),
    the variants taking turns, and the memory format lowssl.perf's ``channels_last: auto`` picks
    for this step (its own measurement, on a copy of the method, not read from any cache)."""
    device = torch.device(args.device)
    names = [name for name, (amp, _) in VARIANTS.items() if amp == "none" or bf16_supported(device)]
    steps = {name: build_step(method_name, backbone, args, *VARIANTS[name])[2] for name in names}
    times = _time_interleaved(steps, args.steps, args.warmup, device)
    method, views, _, _ = build_step(method_name, backbone, args, "none", False)
    workload = Workload(
        training_step(method, [tuple(v.shape) for v in views], device, lambda trial, x: trial(x, 1).loss),
        {"task": f"bench:{method_name}", "backbone": backbone, "precision": "none"},
        args.batch,
    )
    family = get_spec(backbone).family
    auto = choose_memory_format("auto", family, lambda: workload, device, backbone, use_cache=False)
    return {
        **_what_ran(method_name, backbone, args),
        "machine": machine(device),  # the CPU model, device, torch version and threads
        "repeats": args.steps,
        "bf16_native": bf16_supported(device),
        "images_per_s": {name: args.batch / statistics.median(times[name]) for name in names},
        "spread_s": {name: max(times[name]) - min(times[name]) for name in names},
        "auto_choice": auto.name,
        "auto_measured_images_per_s": auto.measured,
    }


def _what_ran(method_name: str, backbone: str, args) -> dict:
    """The step a result is of: method, backbone, batch and view sizes."""
    return {
        "method": method_name,
        "backbone": backbone,
        "batch": args.batch,
        "global_size": args.global_size,
        "local_size": args.local_size,
        "n_local": args.n_local,
    }


def measure(method_name: str, backbone: str, args) -> dict:
    device = torch.device(args.device)
    method, views, full_step, autocast = build_step(method_name, backbone, args, args.amp, args.channels_last)

    def bare_step():
        method.zero_grad(set_to_none=True)  # as the full step: gradients written, not accumulated
        with autocast():
            student_output, _ = method.forward_networks(views)
        student_output.float().square().mean().backward()

    student_head = getattr(method, "student_head", None) or method.projection_head

    def student_step():
        method.zero_grad(set_to_none=True)
        with autocast():
            student_output = multicrop_forward(method.student_backbone, student_head, views)
        student_output.float().square().mean().backward()

    times = _time_interleaved(
        {"full": full_step, "bare": bare_step, "student": student_step}, args.steps, args.warmup, device
    )
    full, bare = times["full"], times["bare"]
    ratios = [f / b for f, b in zip(full, bare, strict=True)]
    student_ratios = [f / s for f, s in zip(full, times["student"], strict=True)]
    result = {
        **_what_ran(method_name, backbone, args),
        "amp": args.amp,
        "channels_last": args.channels_last,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "repeats": args.steps,
        "step_s_median": statistics.median(full),
        "step_s_spread": max(full) - min(full),
        "bare_s_median": statistics.median(bare),
        "bare_s_spread": max(bare) - min(bare),
        "images_per_s": args.batch / statistics.median(full),
        "bare_images_per_s": args.batch / statistics.median(bare),
    }
    # Step / limit per repeat (the steps take turns), then the median and spread of those ratios.
    for key, values in (("overhead_ratio", ratios), ("student_only_ratio", student_ratios)):
        stats = summary(values)
        result[key], result[f"{key}_spread"] = stats["median"], stats["spread"]
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # this process so far
    if device.type == "cuda":
        result["peak_cuda_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["dino", "swav", "moco"])
    parser.add_argument("--backbones", nargs="+", default=["mobilenet_v2", "resnet18"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--global-size", type=int, default=224)
    parser.add_argument("--local-size", type=int, default=128)
    parser.add_argument("--n-local", type=int, default=6)
    parser.add_argument("--moco-queue", type=int, default=65536, help="MoCo queue length (paper: 65536)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument(
        "--variants",
        action="store_true",
        help="instead: the full step in fp32, channels_last and (native bf16 only) bf16, and the auto choice",
    )
    args = parser.parse_args(argv)
    results = []
    for backbone in args.backbones:
        for method_name in args.methods:
            result = (measure_variants if args.variants else measure)(method_name, backbone, args)
            results.append(result)
            show(result)
    write(results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
