"""handlers/images.py on real images made with Pillow, and on bombs and broken files made by hand."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from chute import Reject
from chute.registry import load_handlers
from chute.sniff import detect
from chute.testing import run, run_handler

HANDLERS = Path(__file__).resolve().parents[2] / "handlers"


def make_image(path: Path, size: tuple[int, int] = (300, 200), mode: str = "RGB") -> Path:
    Image.new(mode, size, "red" if mode != "CMYK" else (0, 255, 255, 0)).save(path)
    return path


def make_animation(path: Path, frames: int) -> Path:
    images = [Image.new("RGB", (32, 32), (40 * i, 0, 0)) for i in range(frames)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0)
    return path


def with_orientation(path: Path, size: tuple[int, int], orientation: int) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.new("RGB", size, "blue").save(path, "JPEG", exif=exif)
    return path


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(path: Path, width: int, height: int) -> Path:
    """A valid 1-bit all-black PNG of ``width`` x ``height``, which zlib squeezes into a few kilobytes."""
    row = bytes(1 + (width + 7) // 8)  # filter byte + packed pixels
    packer = zlib.compressobj(9)
    block = row * 500
    idat = b"".join(packer.compress(block) for _ in range(height // 500)) + packer.compress(row * (height % 500))
    idat += packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat)
                     + png_chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize(("suffix", "fmt"), [(".png", "PNG"), (".jpg", "JPEG"), (".gif", "GIF"), (".webp", "WEBP")])
def test_format_size_and_mode_are_reported(tmp_path: Path, suffix: str, fmt: str) -> None:
    result = run_handler("image_info", make_image(tmp_path / f"pic{suffix}"))
    expected_mode = "P" if fmt == "GIF" else "RGB"
    assert (result["format"], result["width"], result["height"], result["mode"]) == (fmt, 300, 200, expected_mode)
    assert result["frames"] == 1 and result["animated"] is False


def test_the_thumbnail_is_a_png_at_most_256_px_on_its_longest_side(tmp_path: Path) -> None:
    done = run("image_info", make_image(tmp_path / "tall.jpg", (200, 1000)))
    assert done.result["thumbnail"] == {"name": "thumbnail.png", "width": 51, "height": 256}
    with Image.open(done.artifacts["thumbnail.png"]) as thumb:
        assert thumb.format == "PNG" and thumb.size == (51, 256)


def test_a_small_image_is_not_enlarged_for_its_thumbnail(tmp_path: Path) -> None:
    result = run_handler("image_info", make_image(tmp_path / "small.png", (40, 30)))
    assert result["thumbnail"]["width"] == 40 and result["thumbnail"]["height"] == 30


def test_a_cmyk_jpeg_gets_an_rgb_thumbnail(tmp_path: Path) -> None:
    done = run("image_info", make_image(tmp_path / "print.jpg", mode="CMYK"))
    assert done.result["mode"] == "CMYK"
    with Image.open(done.artifacts["thumbnail.png"]) as thumb:
        assert thumb.mode == "RGB"


def test_an_animated_gif_counts_its_frames(tmp_path: Path) -> None:
    result = run_handler("image_info", make_animation(tmp_path / "anim.gif", 3))
    assert result["frames"] == 3 and result["animated"] is True


def test_an_animated_png_is_routed_as_apng_to_the_image_handler(tmp_path: Path) -> None:
    path = make_animation(tmp_path / "anim.png", 4)
    mime = detect(path.read_bytes()[:8192], path.name, None).mime
    assert mime == "image/apng"
    assert load_handlers(HANDLERS).route(mime).name == "image_info"  # type: ignore[union-attr]
    assert run_handler("image_info", path)["frames"] == 4


def test_the_exif_orientation_tag_is_reported(tmp_path: Path) -> None:
    assert run_handler("image_info", with_orientation(tmp_path / "cam.jpg", (40, 20), 6))["orientation"] == 6


def test_an_image_without_exif_has_no_orientation(tmp_path: Path) -> None:
    assert run_handler("image_info", make_image(tmp_path / "plain.jpg"))["orientation"] is None


def test_the_thumbnail_is_turned_upright_by_the_exif_orientation(tmp_path: Path) -> None:
    result = run_handler("image_info", with_orientation(tmp_path / "cam.jpg", (40, 20), 6))
    assert (result["width"], result["height"]) == (40, 20)
    assert (result["thumbnail"]["width"], result["thumbnail"]["height"]) == (20, 40)


@pytest.mark.parametrize(("width", "height"), [(8000, 7000), (10_000, 10_000), (20_000, 20_000)],
                         ids=["over-MAX_PIXELS", "over-pillow-warning", "over-pillow-error"])
def test_a_decompression_bomb_is_rejected_before_decoding(tmp_path: Path, width: int, height: int) -> None:
    path = bomb_png(tmp_path / "bomb.png", width, height)
    assert path.stat().st_size < 200_000
    with pytest.raises(Reject, match="decompression bomb"):
        run_handler("image_info", path)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_a_truncated_image_is_rejected(tmp_path: Path, suffix: str) -> None:
    noise = tmp_path / f"noise{suffix}"
    Image.effect_noise((400, 400), 64).convert("RGB").save(noise)  # noise does not compress: the cut bites
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(noise.read_bytes()[: noise.stat().st_size // 2])
    with pytest.raises(Reject, match="not a readable image"):
        run_handler("image_info", cut)


def test_bytes_that_are_not_an_image_are_rejected() -> None:
    with pytest.raises(Reject, match="not a readable image"):
        run_handler("image_info", b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, "fake.png")
