"""The speaker-side acceptance check (docs/data.md): one picture per dialog video.

For the first utterance of every dialog it draws the crop that training uses on the whole frame
(the utterance's first frame), labelled with the utterance id and side. On IEMOCAP the marker dots
on the left actor's face make a wrong side rule obvious at a glance; on the demo corpus the speaker
is the actor whose mouth moves.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from giamic.data.dataset import load_dataset
from giamic.data.video import CropSpec, VideoWindow, decode_windows
from giamic.utils.io import atomic_open

BOX_COLOR = (255, 0, 255)  # magenta: rare in both IEMOCAP and the demo corpus


def draw_box(frame: np.ndarray, bounds: tuple[int, int, int, int], width: int = 3) -> np.ndarray:
    """A copy of ``frame [H,W,3]`` with the rectangle ``(x0, y0, x1, y1)`` (exclusive ends) outlined."""
    out = frame.copy()
    x0, y0, x1, y1 = bounds
    c = np.array(BOX_COLOR, dtype=out.dtype)
    out[y0 : y0 + width, x0:x1] = c
    out[max(y0, y1 - width) : y1, x0:x1] = c
    out[y0:y1, x0 : x0 + width] = c
    out[y0:y1, max(x0, x1 - width) : x1] = c
    return out


def render_crops(data_dir: str | os.PathLike, out: str | os.PathLike, limit: int | None = None) -> list[Path]:
    """Write ``out/<dialog>.png`` for the first utterance (with a video and a crop) of each dialog video.

    Returns the written paths, in the order of the dataset. The crop is exactly
    ``Utterance.crop`` resolved on the frame size, i.e. what extraction feeds the video encoder.
    """
    from PIL import Image, ImageDraw

    ds = load_dataset(data_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    first: dict[Path, object] = {}
    for u in ds.utterances:
        if u.avi is not None and u.avi not in first:
            first[u.avi] = u
    written: list[Path] = []
    for avi, u in list(first.items())[: limit or None]:
        (frames,) = decode_windows(avi, [VideoWindow(u.start or 0.0, u.end or (u.start or 0.0) + 1.0,
                                                     CropSpec(mode="full"))], max_frames=1)
        frame = frames[0]
        crop = u.crop
        bounds = crop.resolve(frame.shape[1], frame.shape[0])
        img = Image.fromarray(draw_box(frame, bounds))
        ImageDraw.Draw(img).text((bounds[0] + 6, bounds[1] + 6), f"{u.utt_id} side={u.side or '-'}", fill=(255, 255, 255))
        name = (u.dialog or avi.stem) + ".png"
        with atomic_open(out / name, "wb") as f:
            img.save(f, format="PNG")
        written.append(out / name)
    return written
