"""The pixel-scale tool of the paper's Sec. 3.2.2: mean(PS_g / PS_l) and the matched local crop size.

``python -m lowssl.pretrain.views pixel-scale`` runs :func:`pretrain.views.pixel_scale.pixel_scale_stats`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from lowssl.config import from_dict
from lowssl.pretrain.views.config import ViewsConfig
from lowssl.pretrain.views.pixel_scale import PIXEL_SCALE_SAMPLES, PIXEL_SCALE_SEED, pixel_scale_stats


def _pixel_scale_command(args: argparse.Namespace) -> str:
    cfg = from_dict(
        ViewsConfig,
        {
            "global_scale": args.global_scale,
            "local_scale": args.local_scale,
            "global_size": args.global_size,
            "local_size": "auto" if args.local_size is None else args.local_size,
            "n_local": 0,  # pixel scales do not depend on how many views are drawn
        },
    )
    stats = pixel_scale_stats(
        cfg, tuple(args.image_size) if args.image_size else None, args.samples, args.seed
    )
    height, width = stats.image_size
    summary = [
        f"pixel scale PS = size^2 / crop area (paper Eq. 1); {stats.n_samples} global and "
        f"{stats.n_samples} local crops on a {height} x {width} image, seed {stats.seed}",
        f"  global crops: scale {cfg.global_scale} -> {cfg.global_size} px, mean PS_g = {stats.mean_ps_global:.4f}",
        f"  local crops:  scale {cfg.local_scale} -> {stats.local_size} px, mean PS_l = {stats.mean_ps_local:.4f}",
        f"  mean(PS_g / PS_l) at LC = {stats.local_size}: {stats.mean_ps_ratio:.4f}",
        f"  matched LC (mean ratio closest to 1): {stats.matched_local_size} (exact {stats.exact_local_size:.2f})",
        json.dumps(
            {"mean_ps_ratio": round(stats.mean_ps_ratio, 6), "matched_local_size": stats.matched_local_size}
        ),
    ]
    return "\n".join(summary)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lowssl.pretrain.views", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    pixel = commands.add_parser(
        "pixel-scale",
        help="mean(PS_g / PS_l) and the matched local crop size (paper Sec. 3.2.2)",
        description="The last line printed is a JSON object {mean_ps_ratio, matched_local_size}; without "
        "--local-size the ratio is reported at the matched local size.",
    )
    pixel.add_argument("--global-scale", type=float, nargs=2, required=True, metavar=("MIN", "MAX"))
    pixel.add_argument("--local-scale", type=float, nargs=2, required=True, metavar=("MIN", "MAX"))
    pixel.add_argument("--global-size", type=int, default=224)
    pixel.add_argument("--local-size", type=int, default=None)
    pixel.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="default: a square image of the global size",
    )
    pixel.add_argument("--samples", type=int, default=PIXEL_SCALE_SAMPLES, help="crops of each kind")
    pixel.add_argument("--seed", type=int, default=PIXEL_SCALE_SEED)
    args = parser.parse_args(argv)
    try:
        print(_pixel_scale_command(args))
    except ValueError as error:  # ConfigError is a ValueError
        pixel.error(str(error))
    return 0


if __name__ == "__main__":
    sys.exit(main())
