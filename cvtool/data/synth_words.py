"""Embedded synthetic word images in the MJSynth (Synth90k) layout, for task=text.

words.txt holds 6000 distinct English words (a-z, 3-14 letters), most frequent first: counted in the English prose
of a Debian machine (Python's pydoc topics, Vim's help, man and info pages, licence texts), kept when two of those
sources use them and Vim's English spell checker accepts them, less a hand list of abbreviations (`foo`, `stdio`).

Every image renders one lexicon word MJSynth-like: a random case (lower, Capitalised, UPPER), font and weight, a
slight rotation, shear and perspective, a textured background and a contrasting colour, sometimes a border and a
blur, Gaussian noise; the crop is `height` px high and as wide as the word plus a few px. The words come from
`default_rng(seed)`, image i of split s (train 0, val 1, test 2) from `default_rng([seed, s, i])`, so files are
byte-identical whatever the worker count. fonts="auto" takes the fonts installed (listed in fonts.txt): another
machine may draw a different, equally valid dataset.
"""

from __future__ import annotations

import functools
import logging
import string
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from cvtool.errors import CvtoolError

log = logging.getLogger("cvtool.data")

WORDS_FILE = Path(__file__).with_name("words.txt")
SPLITS = ("train", "val", "test")
BUNDLED = "bundled"  # font spec of Pillow's own font (ImageFont.load_default, FreeType)
FONT_DIR = Path("/usr/share/fonts")
FONT_SUFFIXES = (".ttf", ".otf")
CHECK_CHARS = string.ascii_letters + string.digits  # a usable font draws each, and not as its .notdef box ...
NOTDEF_PROBE = "\ue000"  # ... which is what fonts draw for this private-use character
LINE_PROBE = "Hg"  # its ascender-to-descender extent is the line box a word is placed in
DIGITS = (2, 6)  # length of the digit strings among the words
MAX_DIGIT_STRINGS = 100_000  # a tenth of the distinct strings of 2-6 digits

CASES, CASE_WEIGHTS = (str.lower, str.capitalize, str.upper), (0.6, 0.25, 0.15)
RENDER_EM = 2  # words are drawn at a font size of this many image heights, then warped and scaled down
BOLDNESS = (0.0, 0.0, 0.0, 0.015, 0.03)  # extra stroke width, share of the font size
ROTATION = 4.0  # degrees either way
SHEAR = 0.25  # horizontal slant per unit of height, either way
PERSPECTIVE = 0.08  # scale change at either end of the word
TEXT_HEIGHT = (0.6, 0.9)  # the warped word's box height, share of the image height
PADDING = (0, 4)  # px of background left and right of the word, each
MIN_WIDTH = 8  # px
BACKGROUND_SPREAD = 60.0  # how far a background's colours stray from its base colour, at most
MIN_CONTRAST = 70.0  # luminance difference of the ink from 3/4 of the pixels under it (0..255) ...
COLOUR_CANDIDATES = 16  # ... met by the first of this many random colours (else black or white)
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
BORDER_PROBABILITY = 0.1
BLUR_PROBABILITY, BLUR_RADIUS = 0.3, (0.3, 1.0)  # px
NOISE_SIGMA = (0.0, 8.0)  # on 0..255
JPEG_QUALITY = 90
FOLDER_FILES, SUBFOLDERS = 200, 5  # images per <a>/<b> folder, <b> folders per <a>


@functools.lru_cache(maxsize=1)
def word_list() -> tuple[str, ...]:
    """The shipped words, most frequent first."""
    return tuple(WORDS_FILE.read_text().split())


@functools.lru_cache(maxsize=128)
def _font(spec: str, size: int) -> ImageFont.FreeTypeFont:
    """The font of `spec` (BUNDLED or a font file) at `size` px; OSError when it cannot be loaded."""
    font = ImageFont.load_default(size) if spec == BUNDLED else ImageFont.truetype(spec, size)
    if not isinstance(font, ImageFont.FreeTypeFont):
        raise OSError("Pillow was built without FreeType")
    return font


def _glyph(font: ImageFont.FreeTypeFont, char: str) -> bytes | None:
    """Pixels of `char` drawn alone, None when nothing is visible."""
    size = 2 * font.size
    canvas = Image.new("L", (size, size))
    ImageDraw.Draw(canvas).text((font.size // 2, font.size // 2), char, font=font, fill=255)
    return canvas.tobytes() if canvas.getbbox() else None


def _font_problem(spec: str) -> str | None:
    """Why font `spec` cannot draw the words (missing file, unreadable, characters missing), None if it can."""
    if spec != BUNDLED and not Path(spec).is_file():
        return "no such font file"
    try:
        font = _font(spec, 32)
    except OSError as exc:
        return f"cannot load it ({exc})"
    notdef = _glyph(font, NOTDEF_PROBE)
    missing = [char for char in CHECK_CHARS if _glyph(font, char) in (None, notdef)]
    return f"it does not draw {''.join(missing)!r}" if missing else None


def resolve_fonts(fonts: str | Sequence[str]) -> list[str]:
    """Font specs to draw with: "auto" = BUNDLED and every .ttf/.otf under FONT_DIR (sorted) that draws a-z, A-Z
    and 0-9; "bundled" = Pillow's font only; else the given font files (or "bundled"), each of which must draw them."""
    if fonts == "auto":
        found = sorted(str(p) for p in FONT_DIR.rglob("*") if p.suffix.lower() in FONT_SUFFIXES)
        return [BUNDLED] + [spec for spec in found if _font_problem(spec) is None]
    specs = [fonts] if isinstance(fonts, str) else [str(spec) for spec in fonts]
    if not specs:
        raise CvtoolError("no fonts given", where="dataset.synth.fonts", fix='use "auto", "bundled" or font files')
    for spec in specs:
        problem = _font_problem(spec)
        if problem:
            raise CvtoolError(f"font {spec}: {problem}", where="dataset.synth.fonts",
                              fix='name .ttf/.otf files that draw a-z, A-Z and 0-9, or use "auto" or "bundled"')
    return specs


def _digit_strings(rng: np.random.Generator, count: int) -> list[str]:
    """`count` distinct random digit strings of DIGITS[0]..DIGITS[1] digits."""
    found: dict[str, None] = {}
    while len(found) < count:
        digits = rng.integers(0, 10, int(rng.integers(DIGITS[0], DIGITS[1] + 1)))
        found["".join(map(str, digits))] = None
    return list(found)


def _digit_counts(train_words: int, test_words: int, numbers: float) -> tuple[int, int]:
    return round(numbers * train_words), round(numbers * test_words)


def choose_words(seed: int, train_words: int, test_words: int, numbers: float) -> tuple[list[str], list[str]]:
    """(training words, test words), disjoint, from `default_rng(seed)`: a random draw from word_list() of which a
    `numbers` share of each (rounded) is replaced by distinct digit strings, each list in a random order."""
    rng = np.random.default_rng(seed)
    digits = _digit_counts(train_words, test_words, numbers)
    words = word_list()
    picked = [words[j] for j in rng.permutation(len(words))[:train_words + test_words - sum(digits)]]
    numerals = _digit_strings(rng, sum(digits))
    cut = train_words - digits[0]
    train, test = picked[:cut] + numerals[:digits[0]], picked[cut:] + numerals[digits[0]:]
    return [train[j] for j in rng.permutation(len(train))], [test[j] for j in rng.permutation(len(test))]


def _warp(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A random forward homography (3 x 3) of a width x height canvas about its centre: shear, then rotation, then
    perspective (x, y) -> (x, y) / (1 + p x), so that the ends of the word differ in scale by up to PERSPECTIVE."""
    theta = np.deg2rad(rng.uniform(-ROTATION, ROTATION))
    cos, sin = np.cos(theta), np.sin(theta)
    shear = np.array([[1, rng.uniform(-SHEAR, SHEAR), 0], [0, 1, 0], [0, 0, 1]])
    rotation = np.array([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]])
    perspective = np.array([[1, 0, 0], [0, 1, 0], [2 * rng.uniform(-PERSPECTIVE, PERSPECTIVE) / width, 0, 1]])
    centre = np.array([[1, 0, -width / 2], [0, 1, -height / 2], [0, 0, 1]])
    return np.linalg.inv(centre) @ perspective @ rotation @ shear @ centre


def _warped(canvas: Image.Image, matrix: np.ndarray) -> Image.Image:
    """`canvas` mapped by the forward homography `matrix`, on a canvas just holding the mapped corners."""
    w, h = canvas.size
    corners = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], dtype=np.float64) @ matrix.T
    corners = corners[:, :2] / corners[:, 2:]
    low, high = np.floor(corners.min(axis=0)), np.ceil(corners.max(axis=0))
    inverse = np.linalg.inv(np.array([[1, 0, -low[0]], [0, 1, -low[1]], [0, 0, 1]]) @ matrix)  # output -> input
    size = tuple(int(v) for v in high - low)
    return canvas.transform(size, Image.PERSPECTIVE, tuple((inverse / inverse[2, 2]).ravel()[:8]), Image.BILINEAR)


def _word_mask(rng: np.random.Generator, text: str, font: ImageFont.FreeTypeFont, height: int) -> Image.Image:
    """Coverage (L image, `height` px high) of `text` in `font`: drawn in its line box, randomly bolder, warped,
    cropped so that the warped box spans TEXT_HEIGHT of the height with PADDING px either side, scaled down."""
    stroke = round(float(rng.choice(BOLDNESS)) * font.size)
    left, top, right, bottom = font.getbbox(text, anchor="ls", stroke_width=stroke)
    _, line_top, _, line_bottom = font.getbbox(LINE_PROBE, anchor="ls", stroke_width=stroke)
    top, bottom = min(top, line_top), max(bottom, line_bottom)
    canvas = Image.new("L", (right - left + 2, bottom - top + 2))
    ImageDraw.Draw(canvas).text((1 - left, 1 - top), text, font=font, fill=255, anchor="ls", stroke_width=stroke,
                                stroke_fill=255)
    word = _warped(canvas, _warp(rng, *canvas.size))
    crop_height = word.height / rng.uniform(*TEXT_HEIGHT)
    crop_top = -(crop_height - word.height) * rng.uniform(0.2, 0.8)
    scale = height / crop_height
    pad_left, pad_right = rng.integers(PADDING[0], PADDING[1] + 1, 2)
    width = max(round(word.width * scale) + int(pad_left + pad_right), MIN_WIDTH)
    box = (-pad_left / scale, crop_top, word.width + pad_right / scale, crop_top + crop_height)
    return word.crop(tuple(round(v) for v in box)).resize((width, height), Image.LANCZOS)


def _colours(rng: np.random.Generator, count: int) -> np.ndarray:
    """`count` random RGB colours (float32, count x 3), each with its saturation scaled by a random share (greys to
    full colours: a uniform RGB draw alone would be mostly garish)."""
    colours = rng.uniform(0, 255, (count, 3)).astype(np.float32)
    grey = colours @ LUMA
    return grey[:, None] + rng.uniform(0, 1, (count, 1)).astype(np.float32) * (colours - grey[:, None])


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A float32 RGB background: a random base colour, plain or varied by up to BACKGROUND_SPREAD along a linear
    gradient or in blurred random blotches."""
    base = _colours(rng, 1)[0]
    kind = int(rng.integers(3))
    if kind == 0:
        variation = np.zeros((height, width, 3), dtype=np.float32)
    elif kind == 1:
        angle = rng.uniform(0, 2 * np.pi)
        along = np.cos(angle) * np.arange(width)[None] + np.sin(angle) * np.arange(height)[:, None]
        along = (along - along.min()) / max(float(np.ptp(along)), 1.0) - 0.5
        variation = along[..., None].astype(np.float32) * rng.uniform(-1, 1, 3).astype(np.float32)
    else:
        cells = rng.integers(0, 256, (int(rng.integers(2, 5)), max(2, width // int(rng.integers(6, 20))), 3),
                             dtype=np.uint8)
        blotches = Image.fromarray(cells).resize((width, height), Image.BICUBIC)
        variation = np.asarray(blotches, dtype=np.float32) / 255 - 0.5
    return np.clip(base + 2 * BACKGROUND_SPREAD * variation * rng.uniform(0, 1), 0, 255)


def _contrasting(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random RGB colour whose luminance differs by MIN_CONTRAST or more from that of 3/4 of the pixels `under`
    (k, 3); black or white, whichever lies farther from their mean, when none of COLOUR_CANDIDATES does."""
    luma = under[:: max(1, len(under) // 64)] @ LUMA
    candidates = _colours(rng, COLOUR_CANDIDATES)
    differences = np.abs((candidates @ LUMA)[:, None] - luma[None])
    quartile = len(luma) // 4  # the difference exceeded by 3/4 of the pixels
    ok = np.partition(differences, quartile, axis=1)[:, quartile] >= MIN_CONTRAST
    if ok.any():
        return candidates[np.argmax(ok)]
    return np.full(3, 0.0 if luma.mean() > 127.5 else 255.0, dtype=np.float32)


def _to_uint8(canvas: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def render_word(rng: np.random.Generator, text: str, fonts: Sequence[str], height: int) -> np.ndarray:
    """One rendering (uint8, height x width x 3) of `text` exactly as given, in a font drawn from `fonts` (specs)."""
    font = _font(fonts[int(rng.integers(len(fonts)))], RENDER_EM * height)
    mask = _word_mask(rng, text, font, height)
    alpha = np.asarray(mask, dtype=np.float32)[..., None] / 255
    canvas = _background(rng, *mask.size[::-1])
    under = canvas[alpha[..., 0] >= 0.5]
    ink = _contrasting(rng, under if len(under) else canvas.reshape(-1, 3))
    if rng.random() < BORDER_PROBABILITY:
        border = np.asarray(mask.filter(ImageFilter.MaxFilter(3)), dtype=np.float32)[..., None] / 255
        canvas += border * (_contrasting(rng, ink[None]) - canvas)
    canvas += alpha * (ink - canvas)
    if rng.random() < BLUR_PROBABILITY:
        blurred = Image.fromarray(_to_uint8(canvas)).filter(ImageFilter.GaussianBlur(rng.uniform(*BLUR_RADIUS)))
        canvas = np.asarray(blurred, dtype=np.float32)
    canvas = canvas + rng.uniform(*NOISE_SIGMA) * rng.standard_normal(canvas.shape, dtype=np.float32)
    return _to_uint8(canvas)


def _word_image(root: Path, fonts: tuple[str, ...], height: int, seed: int, job: tuple[int, int, str]) -> str:
    """Render job `(split, i, "<a>/<b>/<n>_<word>_<k>.jpg")` in a random case; write it with the word as rendered
    and return that file name."""
    split_index, i, name = job
    rng = np.random.default_rng([seed, split_index, i])
    prefix, word, suffix = name.rsplit("_", 2)
    text = CASES[int(rng.choice(len(CASES), p=CASE_WEIGHTS))](word)
    path = f"{prefix}_{text}_{suffix}"
    Image.fromarray(render_word(rng, text, fonts, height)).save(root / path, quality=JPEG_QUALITY)
    return path


def _folder_name(index: int) -> str:
    """"<a>/<b>/<n>" of the `index`-th image (from 0): FOLDER_FILES images per <b>, SUBFOLDERS <b> per <a>."""
    return f"{index // (FOLDER_FILES * SUBFOLDERS) + 1}/{index // FOLDER_FILES % SUBFOLDERS + 1}/" \
           f"{index % FOLDER_FILES + 1}"


def _check(counts: dict[str, int], height: int, numbers: float) -> None:
    for name, value in counts.items():
        if value < 1:
            raise CvtoolError(f"synthetic words need {name} >= 1, got {value}", where=f"dataset.synth.{name}",
                              fix=f"set dataset.synth.{name} to 1 or more")
    if height < 16:
        raise CvtoolError(f"synthetic words need height >= 16, got {height}", where="dataset.synth.height",
                          fix="set dataset.synth.height to 16 or more (CRNN: 32)")
    if not 0 <= numbers <= 1:
        raise CvtoolError(f"numbers is the share of digit strings among the words, got {numbers}",
                          where="dataset.synth.numbers", fix="set dataset.synth.numbers in [0, 1]")
    digits = _digit_counts(counts["train_words"], counts["test_words"], numbers)
    needed = counts["train_words"] + counts["test_words"] - sum(digits)
    if needed > len(word_list()) or sum(digits) > MAX_DIGIT_STRINGS:
        raise CvtoolError(f"{counts['train_words']} training and {counts['test_words']} test words need {needed} "
                          f"dictionary words and {sum(digits)} digit strings; words.txt holds {len(word_list())} "
                          f"words", where="dataset.synth.train_words",
                          fix=f"lower train_words + test_words to {len(word_list())} words plus the numbers share")


def _write_annotations(root: Path, jobs: list[tuple[int, int, str]], paths: list[str]) -> None:
    """annotation_<split>.txt and annotation.txt (all): MJSynth lines `./<path> <lexicon index>`."""
    from cvtool.data.shapes import _write_lines

    lines: list[list[str]] = [[] for _ in SPLITS]
    for (split_index, _, _), path in zip(jobs, paths, strict=True):
        lines[split_index].append(f"./{path} {path.rsplit('_', 1)[1].removesuffix('.jpg')}")
    for split, split_lines in zip(SPLITS, lines, strict=True):
        _write_lines(root / f"annotation_{split}.txt", split_lines)
    _write_lines(root / "annotation.txt", [line for split_lines in lines for line in split_lines])


def generate_words(root: Path, *, train_words: int = 1000, renders: int = 20, val_renders: int = 2,
                   test_words: int = 1000, test_renders: int = 2, height: int = 32,
                   fonts: str | list[str] = "auto", numbers: float = 0.05, seed: int = 0) -> Path:
    """MJSynth layout under `root`: lexicon.txt (training words, then test words; index = line - 1), images
    `<a>/<b>/<n>_<Word>_<index>.jpg`, annotation_train.txt (`renders` renderings of each training word),
    annotation_val.txt (`val_renders` new renderings of each), annotation_test.txt (`test_renders` renderings of
    each test word, none of which is a training word), annotation.txt (all) and fonts.txt (the fonts drawn with)."""
    from cvtool.data.shapes import _jobs, _map_images, _write_lines  # shapes registers this generator

    root = Path(root)
    counts = {"train_words": train_words, "renders": renders, "val_renders": val_renders, "test_words": test_words,
              "test_renders": test_renders}
    _check(counts, height, numbers)
    specs = resolve_fonts(fonts)
    log.info("synthetic words: %d fonts (fonts.txt): %s", len(specs), ", ".join(Path(s).name for s in specs))
    train, test = choose_words(seed, train_words, test_words, numbers)
    lexicon = train + test
    boundary = (renders + val_renders) * train_words  # train and val images come before the test images

    def name(index: int, i: int) -> str:
        k = i % train_words if index < boundary else train_words + i % test_words
        return f"{_folder_name(index)}_{lexicon[k]}_{k}.jpg"

    jobs = _jobs({"train": renders * train_words, "val": val_renders * train_words,
                  "test": test_renders * test_words}, name)
    for folder in sorted({job[2].rsplit("/", 1)[0] for job in jobs}):
        (root / folder).mkdir(parents=True, exist_ok=True)
    work = functools.partial(_word_image, root, tuple(specs), height, seed)
    paths = _map_images(work, jobs, "generating synthetic words")
    _write_lines(root / "lexicon.txt", lexicon)
    _write_lines(root / "fonts.txt", specs)
    _write_annotations(root, jobs, paths)
    return root
