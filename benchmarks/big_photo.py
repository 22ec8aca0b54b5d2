"""A 63-megapixel photo with one real face, for the memory check of whole-photo restoration.

    python benchmarks/big_photo.py big.jpg [--data ../shared/data]
    /usr/bin/time -v honestface restore big.jpg -o out/      # "Maximum resident set size"

The background is the curtain and flag beside the face of an LFW photo (no face in it),
enlarged to 9184 x 6880 (63.2 MP); the LFW photo itself, enlarged 4x (a 1000 px square, the
face about 450 px), sits in its middle. Written as JPEG (quality 90).
"""

from __future__ import annotations

import argparse
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PHOTO = ("Alvaro_Uribe", "Alvaro_Uribe_0001.jpg")
WIDTH, HEIGHT = 9184, 6880


def main(argv: list[str] | None = None) -> int:
    from PIL import Image

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    args = parser.parse_args(argv)
    with Image.open(args.data / "lfw" / PHOTO[0] / PHOTO[1]) as photo:
        photo = photo.convert("RGB")
        background = photo.crop((0, 20, 55, 180)).resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC)
        face = photo.resize((1000, 1000), Image.Resampling.BICUBIC)
    background.paste(face, ((WIDTH - 1000) // 2, (HEIGHT - 1000) // 2))
    background.save(args.output, quality=90)
    print(f"{args.output}: {WIDTH}x{HEIGHT} = {WIDTH * HEIGHT / 1e6:.1f} MP, one face of about 450 px")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
