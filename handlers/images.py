"""Images (PNG, APNG, JPEG, GIF, WebP): format, size, mode, frames, EXIF orientation, and a thumbnail."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

from PIL import Image, ImageOps

from chute import Context, Reject, Upload, handler

#: more pixels than this (width x height) is refused as a possible decompression bomb
MAX_PIXELS = 50_000_000
THUMBNAIL_SIZE = 256
ORIENTATION = 0x0112  # the EXIF tag
#: what Pillow raises on a truncated or malformed image; none of them gets better on a retry
BROKEN = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)
BOMB = (Image.DecompressionBombWarning, Image.DecompressionBombError)
#: modes a PNG holds as they are; anything else (CMYK, YCbCr, PA...) is converted first
PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}


def thumbnail(image: Image.Image) -> Image.Image:
    """The first frame, upright (EXIF orientation applied), at most THUMBNAIL_SIZE px on its longest side."""
    image.seek(0)
    image.draft(None, (THUMBNAIL_SIZE, THUMBNAIL_SIZE))  # JPEG only: decode at a reduced scale
    thumb = ImageOps.exif_transpose(image)
    thumb.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    if thumb.mode not in PNG_MODES:
        thumb = thumb.convert("RGBA" if "A" in thumb.mode or "transparency" in thumb.info else "RGB")
    return thumb


def describe(path: str) -> tuple[dict[str, object], bytes]:
    """The image's facts and its thumbnail as PNG bytes; the size is checked before any pixel is decoded."""
    with Image.open(path) as image:  # reads the header only
        if image.width * image.height > MAX_PIXELS:
            raise Reject(f"refused as a possible decompression bomb: {image.width}x{image.height} is over "
                         f"{MAX_PIXELS} pixels")
        info: dict[str, object] = {
            "format": image.format, "width": image.width, "height": image.height, "mode": image.mode,
            "frames": getattr(image, "n_frames", 1), "animated": bool(getattr(image, "is_animated", False)),
            "orientation": image.getexif().get(ORIENTATION),
        }
        thumb = thumbnail(image)
    out = io.BytesIO()
    thumb.save(out, "PNG")
    info["thumbnail"] = {"name": "thumbnail.png", "width": thumb.width, "height": thumb.height}
    return info, out.getvalue()


@handler(["image/png", "image/apng", "image/jpeg", "image/gif", "image/webp"],
         extensions=[".png", ".jpg", ".jpeg", ".gif", ".webp"])
def image_info(upload: Upload, ctx: Context) -> dict[str, object]:
    """Describes an image and saves thumbnail.png; a bomb or a broken file is refused at once, never retried."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # over Pillow's own limit: refuse, too
        try:
            info, png = describe(str(upload.path))
        except BOMB as exc:
            raise Reject(f"refused as a possible decompression bomb: {exc}") from None
        except BROKEN as exc:
            raise Reject(f"not a readable image: {exc}") from None
    ctx.save_artifact("thumbnail.png", png)
    return info
