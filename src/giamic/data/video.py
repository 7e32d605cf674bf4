"""Video input: the speaker crop and frame windows decoded once per dialog video.

Frames at the native rate whose timestamps fall in the audio window, at most 180 (the paper's
"180 individual images"), or thinned to a lower frame rate (``fps``, the frame-rate setting of
fast CPU prediction, docs/predict.md); the speaker's half from the marker-wearer rule with the fixed crop
windows ``left = (5,120,350,240)``, ``right = (365,120,350,240)`` in 720×480 coordinates,
alternative ``half`` (docs/decisions.md: the 6-s audio window, speaker side and crop window).
Decoding uses PyAV with codec threading; frames are selected by presentation timestamp, never by
assuming a frame rate.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from giamic.data.errors import MediaError

MAX_FRAMES = 180  # the paper's 180 images: 6 s at about 30 fps
MAX_SEC = 6.0  # the video window follows the audio crop (docs/decisions.md)
REFERENCE_SIZE = (720, 480)  # IEMOCAP dialog videos; the fixed windows are in these pixels
FIXED_WINDOWS: dict[str, tuple[int, int, int, int]] = {
    "L": (5, 120, 350, 240),
    "R": (365, 120, 350, 240),
}
# Frame times are floats derived from integer pts; this absorbs rounding at window edges only.
_TIME_EPS = 1e-6

CropMode = Literal["fixed_window", "half", "full"]


@dataclass(frozen=True)
class CropSpec:
    """Which part of a frame to keep (docs/decisions.md, speaker side and crop window).

    * ``box=(x, y, w, h)``: an explicit box in pixels of the actual frame (manifest/user); wins
      over everything else; clipped to the frame.
    * ``mode="fixed_window"`` with ``side="L"|"R"``: the IEMOCAP windows, given in 720×480
      reference pixels and scaled to the actual frame size, so a 360×240 video crops the same region.
    * ``mode="half"`` with a side: the full-height left or right half.
    * ``mode="full"``: the whole frame (``side`` ignored).
    """

    side: Literal["L", "R"] | None = None
    box: tuple[int, int, int, int] | None = None
    mode: CropMode = "fixed_window"

    def __post_init__(self) -> None:
        if self.side not in (None, "L", "R"):
            raise ValueError(f"side must be 'L', 'R' or None, got {self.side!r}")
        if self.mode not in ("fixed_window", "half", "full"):
            raise ValueError(f"unknown crop mode {self.mode!r}")
        if self.box is not None:
            if len(self.box) != 4 or self.box[2] <= 0 or self.box[3] <= 0:
                raise ValueError(f"crop box must be (x, y, w, h) with w, h > 0, got {self.box!r}")
        elif self.mode != "full" and self.side is None:
            raise ValueError(f"crop mode {self.mode!r} needs a side ('L' or 'R') or an explicit box")

    def resolve(self, width: int, height: int) -> tuple[int, int, int, int]:
        """Pixel bounds ``(x0, y0, x1, y1)`` (exclusive ends) for a ``width``×``height`` frame."""
        if self.box is not None:
            x, y, w, h = (int(v) for v in self.box)
            x0, y0 = max(0, x), max(0, y)
            x1, y1 = min(width, x + w), min(height, y + h)
        elif self.mode == "full":
            x0, y0, x1, y1 = 0, 0, width, height
        elif self.mode == "half":
            mid = width // 2
            x0, x1 = (0, mid) if self.side == "L" else (mid, width)
            y0, y1 = 0, height
        else:
            rx, ry, rw, rh = FIXED_WINDOWS[self.side]  # type: ignore[index]
            sx, sy = width / REFERENCE_SIZE[0], height / REFERENCE_SIZE[1]
            # Round half up (not to even) so both sides scale the same way.
            x0, y0 = int(rx * sx + 0.5), int(ry * sy + 0.5)
            x1, y1 = min(width, int((rx + rw) * sx + 0.5)), min(height, int((ry + rh) * sy + 0.5))
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"crop {self} is empty on a {width}x{height} frame")
        return x0, y0, x1, y1


@dataclass(frozen=True)
class VideoWindow:
    """One utterance's frames in one video: timestamps in ``[start, start + min(max_sec, end - start))``."""

    start: float
    end: float
    crop: CropSpec = CropSpec(mode="full")

    def stop(self, max_sec: float | None) -> float:
        """Exclusive end of the kept interval: ``start + min(max_sec, end - start)``, or ``end``
        when ``max_sec=None`` (the whole turn)."""
        if max_sec is None:
            return self.end
        return self.start + min(max_sec, self.end - self.start)


@dataclass(frozen=True)
class VideoInfo:
    """Container facts read without decoding the picture data."""

    path: Path
    width: int
    height: int
    fps: float
    duration: float  # seconds, from the stream (or container) header

    @property
    def n_frames_estimate(self) -> int:
        return int(round(self.duration * self.fps))


def _open(path: Path) -> av.container.InputContainer:
    if not path.is_file():
        raise MediaError("video file not found", path, kind="missing_video")
    if path.stat().st_size == 0:
        raise MediaError("video file is empty (0 bytes)", path, kind="empty_video")
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, ValueError) as e:
        raise MediaError(f"cannot open video ({e})", path, kind="corrupt_video") from e
    if not container.streams.video:
        container.close()
        raise MediaError("file holds no video stream", path, kind="corrupt_video")
    return container


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Size, frame rate and duration of a video; :class:`MediaError` when it cannot be used."""
    path = Path(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        width, height = int(ctx.width or 0), int(ctx.height or 0)
        rate = stream.average_rate or stream.base_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        elif stream.frames and fps:
            duration = stream.frames / fps
        else:
            duration = 0.0
    finally:
        container.close()
    if width <= 0 or height <= 0:
        raise MediaError("video stream has no frame size (corrupt header)", path, kind="corrupt_video")
    if duration <= 0:
        raise MediaError("video has zero duration", path, kind="empty_video")
    return VideoInfo(path=path, width=width, height=height, fps=fps, duration=duration)


def decode_windows(
    path: str | os.PathLike,
    windows: list[VideoWindow],
    max_frames: int | None = MAX_FRAMES,
    max_sec: float | None = MAX_SEC,
    allow_empty: bool = False,
    return_times: bool = False,
    fps: float | None = None,
) -> list[np.ndarray] | tuple[list[np.ndarray], list[np.ndarray]]:
    """Decode ``path`` once and return the cropped RGB frames of every window.

    For each window the frames whose presentation timestamps fall in
    ``[start, start + min(max_sec, end - start))`` are kept, at most ``max_frames`` of them, each
    cropped to the window's :class:`CropSpec` (docs/decisions.md). The file is decoded from
    the beginning exactly once, in timestamp order, and decoding stops after the last window, so a
    dialog's utterances cost one pass instead of one seek-and-decode each. Only frames inside some
    window are converted to RGB. ``max_frames=None`` / ``max_sec=None`` lift the limits.

    ``fps`` thins the frames to at most that rate (the video frame-rate setting, docs/predict.md):
    the window is cut into slots of ``1 / fps`` seconds from its start and the first decoded frame
    of each slot is kept, so a frame rate at or above the native one keeps every frame and
    ``fps=5`` keeps 30 of a 6-s window at 29.97 fps. ``None`` keeps the native rate (the paper's 180
    frames per 6 s). Thinning works on timestamps, so variable frame rates thin evenly too.

    Returns a list aligned with ``windows`` of uint8 arrays ``[k, h, w, 3]`` (RGB); with
    ``return_times=True`` also a list of float64 arrays ``[k]`` of frame timestamps in seconds.

    A window that gets no frame (it starts at or after the end of the video) raises
    :class:`MediaError` naming the file and the window, unless ``allow_empty`` is set, in which
    case its array has ``k = 0``. A window that runs past the end keeps the frames that exist.
    """
    path = Path(path)
    if max_frames is not None and max_frames <= 0:
        raise ValueError("max_frames must be positive or None")
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be positive or None, got {fps!r}")
    for w in windows:
        if not (w.end > w.start >= 0):
            raise ValueError(f"bad window [{w.start}, {w.end}) for {path}: need 0 <= start < end")
    n = len(windows)
    frames: list[_FrameBuffer | None] = [None] * n
    times: list[list[float]] = [[] for _ in range(n)]
    slots = [-1] * n  # per window, the last 1/fps slot that got a frame (fps thinning)
    if n == 0:
        return ([], []) if return_times else []
    order = sorted(range(n), key=lambda i: windows[i].start)
    stops = [windows[i].stop(max_sec) for i in range(n)]
    boxes: list[tuple[int, int, int, int]] = []
    container = _open(path)
    last_time: float | None = None
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame + slice threading in the decoder
        nxt = 0  # next window (in start order) not yet opened
        active: list[int] = []
        rate = float(stream.average_rate) if stream.average_rate else None
        fallback_step = 1.0 / rate if rate else None
        # One reformatter for the whole file keeps FFmpeg's scaler context between frames.
        reformatter = VideoReformatter()
        for frame in container.decode(stream):
            t = frame.time
            if t is None:  # no pts: continue the timeline from the previous frame
                if last_time is None or fallback_step is None:
                    raise MediaError("frame without timestamp", path, kind="corrupt_video")
                t = last_time + fallback_step
            last_time = t
            if not boxes:
                try:
                    boxes = [w.crop.resolve(frame.width, frame.height) for w in windows]
                except ValueError as e:
                    raise MediaError(str(e), path, kind="bad_crop") from e
            while nxt < n and windows[order[nxt]].start <= t + _TIME_EPS:
                active.append(order[nxt])
                nxt += 1
            # Every active window has started; drop those past their stop or already full.
            active = [
                i
                for i in active
                if t + _TIME_EPS < stops[i] and (max_frames is None or len(times[i]) < max_frames)
            ]
            if not active:
                if nxt >= n:
                    break  # every window opened and closed: the rest of the file is not needed
                continue
            active_now = active
            if fps is not None:  # the first frame of each 1/fps slot from the window start
                active_now = []
                for i in active:
                    slot = int(np.floor((t - windows[i].start) * fps + _TIME_EPS))
                    if slot > slots[i]:
                        slots[i] = slot
                        active_now.append(i)
            if active_now:
                # One RGB conversion shared by all windows; each crop is then a slice copied once,
                # straight into the window's preallocated output.
                rgb = reformatter.reformat(frame, format="rgb24").to_ndarray()
                for i in active_now:
                    x0, y0, x1, y1 = boxes[i]
                    buf = frames[i]
                    if buf is None:
                        r = min(rate, fps) if rate and fps else (rate or fps)
                        est = int((stops[i] - windows[i].start) * r) + 2 if r else 32
                        cap = min(est, max_frames) if max_frames is not None else est
                        buf = frames[i] = _FrameBuffer((y1 - y0, x1 - x0), max(cap, 1))
                    buf.append(rgb[y0:y1, x0:x1])
                    times[i].append(t)
    except av.FFmpegError as e:
        raise MediaError(f"cannot decode video ({e})", path, kind="corrupt_video") from e
    finally:
        container.close()
    out: list[np.ndarray] = []
    out_t: list[np.ndarray] = []
    for i, w in enumerate(windows):
        buf = frames[i]
        if buf is None:
            if not allow_empty:
                end_note = f"the video ends at {last_time:.3f}s" if last_time is not None else "no frame decoded"
                raise MediaError(
                    f"window [{w.start:.4f}, {stops[i]:.4f}) holds no frame ({end_note})",
                    path,
                    kind="window_past_end",
                )
            if boxes:
                x0, y0, x1, y1 = boxes[i]
                out.append(np.zeros((0, y1 - y0, x1 - x0, 3), dtype=np.uint8))
            else:
                out.append(np.zeros((0, 0, 0, 3), dtype=np.uint8))
        else:
            out.append(buf.result())
        out_t.append(np.asarray(times[i], dtype=np.float64))
    return (out, out_t) if return_times else out


class _FrameBuffer:
    """A growable ``[k, h, w, 3]`` uint8 array: frames are copied in once, never re-stacked."""

    def __init__(self, hw: tuple[int, int], capacity: int) -> None:
        self.data = np.empty((capacity, hw[0], hw[1], 3), dtype=np.uint8)
        self.k = 0

    def append(self, img: np.ndarray) -> None:
        if self.k == self.data.shape[0]:  # estimate too small (variable frame rate): double
            self.data = np.concatenate([self.data, np.empty_like(self.data)])
        self.data[self.k] = img
        self.k += 1

    def result(self) -> np.ndarray:
        return self.data[: self.k]


def decode_all(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Every frame of a video as RGB uint8 ``[k, H, W, 3]`` with timestamps (small files, tests)."""
    path = Path(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        imgs, ts = [], []
        for frame in container.decode(stream):
            imgs.append(frame.to_ndarray(format="rgb24"))
            ts.append(frame.time)
    except av.FFmpegError as e:
        raise MediaError(f"cannot decode video ({e})", path, kind="corrupt_video") from e
    finally:
        container.close()
    if not imgs:
        raise MediaError("video holds no decodable frame", path, kind="empty_video")
    return np.stack(imgs), np.asarray(ts, dtype=np.float64)
