"""Foreign inputs for `cargo xtask bench-ood`: images of another kind than Fashion-MNIST.

    python3 xtask/bench/ood_sets.py OUT

writes two folders of 28x28 gray PNGs (white on black, like Fashion-MNIST):

- OUT/digits:  scikit-learn's bundled handwritten digits (1,797 images of 8x8, no download),
               upscaled bilinearly to 20x20 and centred on 28x28 like MNIST;
- OUT/glyphs:  the letters A-Z, a-z and digits 0-9 rendered with the font siam embeds
               (crates/siam-eval/assets/DejaVuSans.ttf) at three sizes and three offsets.

Needs pillow and scikit-learn (pip install pillow scikit-learn).
"""

import pathlib
import string
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from sklearn.datasets import load_digits

ROOT = pathlib.Path(__file__).resolve().parents[2]
FONT = ROOT / "crates/siam-eval/assets/DejaVuSans.ttf"


def digits(out: pathlib.Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    d = load_digits()
    for i, img in enumerate(d.images):
        small = Image.fromarray((img / 16.0 * 255).astype(np.uint8)).resize((20, 20), Image.BILINEAR)
        canvas = Image.new("L", (28, 28), 0)
        canvas.paste(small, (4, 4))
        canvas.save(out / f"{i:04d}.png")
    return len(d.images)


def glyphs(out: pathlib.Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for size in (16, 20, 24):
        font = ImageFont.truetype(str(FONT), size)
        for dx in (-2, 0, 2):
            for ch in string.ascii_letters + string.digits:
                canvas = Image.new("L", (28, 28), 0)
                draw = ImageDraw.Draw(canvas)
                draw.text((14 + dx, 14), ch, fill=255, font=font, anchor="mm")
                canvas.save(out / f"{n:04d}.png")
                n += 1
    return n


if __name__ == "__main__":
    out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/bench/ood")
    print(f"{digits(out / 'digits')} digits, {glyphs(out / 'glyphs')} glyphs in {out}")
