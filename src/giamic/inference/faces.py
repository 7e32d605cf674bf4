"""The speaker's face in a recording: detection, a stable box per segment, the active speaker.

For videos that are not IEMOCAP's two-person layout (``giamic analyze``), each utterance's video
crop is found here instead of from a fixed window:

1. **Detect** faces on a few frames of the segment (:data:`DETECT_FRAMES`, evenly spaced) with
   OpenCV's frontal-face Haar cascade (``haarcascade_frontalface_default.xml``, shipped inside the
   ``opencv-python-headless`` 4.x wheel, so nothing is downloaded; the choice is measured in
   docs/decisions.md). Frames taller than :data:`DETECT_MAX_HEIGHT` lines are scaled down first
   (speed); faces at least a tenth of the frame's height (:data:`MIN_FACE_SHARE`, and
   :data:`MIN_FACE` px) are found: smaller ones would be blurs at the video encoder's input anyway.
2. **Track**: detections of the sampled frames are grouped by position into faces; each face's
   box over the segment is the median of its boxes (a stable box: no jitter within an utterance).
3. **Choose** the speaker when several faces are seen: the face whose mouth region (lower half of
   the box) changes more than its eye region (head motion cancels) while the segment's audio is
   loud; :func:`mouth_activity`. The user can override with ``--face N`` (N-th face from the left),
   ``--side``, ``--crop-box`` or ``--full-frame``.
4. **Crop**: the box the encoders see is the face box enlarged to the training crops' framing
   (:func:`crop_box_for`): as high as the face box, with the training window's 350:240 aspect,
   framed like the demo corpus's fixed-window crops frame its faces; docs/predict.md compares both.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError

log = logging.getLogger(__name__)

DETECT_FRAMES = 5  # frames per segment run through the detector
DETECT_MAX_HEIGHT = 480  # frames are scaled down to at most this height for detection
MIN_FACE = 24  # pixels of the scaled frame
MIN_FACE_SHARE = 0.1  # of the frame's height
MIN_NEIGHBORS = 5  # overlapping cascade hits needed for a face (OpenCV's usual setting)
SCALE_STEP = 1.1  # image pyramid step of the cascade (1.2 halves the time but found 40 of 56 generated faces)
# Framing of the crop around a detected face box (the cascade's square box, brows to chin): the
# height is CROP_HEIGHT x the box height, the width follows the training window's aspect (350 x 240,
# the IEMOCAP fixed window), the centre is raised by CROP_RAISE x the box height. Measured on the
# demo faces (106 detections): the training crop of a face is 1.01 x the box high (10-90 %:
# 1.00-1.10) and centred 0.04 x the box height above it (docs/predict.md).
CROP_HEIGHT = 1.0
CROP_ASPECT = 350 / 240
CROP_RAISE = 0.04


@dataclass(frozen=True)
class Face:
    """One detection: box ``(x, y, w, h)`` in pixels of the original frame, and the number of
    overlapping cascade hits that made it (its confidence)."""

    box: tuple[int, int, int, int]
    score: float


class FaceDetector:
    """OpenCV's frontal-face Haar cascade on RGB frames (any size; scaled to <= ``max_height`` lines).

    ``min_neighbors``: overlapping detections needed for a face (higher: fewer, surer faces).
    """

    def __init__(self, max_height: int = DETECT_MAX_HEIGHT, min_neighbors: int = MIN_NEIGHBORS,
                 min_face: int = MIN_FACE) -> None:
        try:
            import cv2
        except ModuleNotFoundError:
            raise InputError("face detection needs OpenCV: `pip install 'giamic[recording]'` (or pass --full-frame, "
                             "--side or --crop-box)") from None
        path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        self._cv2 = cv2
        self._det = cv2.CascadeClassifier(path)
        if self._det.empty():
            raise InputError(f"{path}: OpenCV's face cascade is missing (opencv-python-headless 4.x ships it; "
                             f"5.x does not): `pip install 'opencv-python-headless<5'`")
        self.max_height = int(max_height)
        self.min_neighbors = int(min_neighbors)
        self.min_face = int(min_face)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        cv2 = self._cv2
        img = np.ascontiguousarray(rgb, dtype=np.uint8)
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"expected an RGB frame [H, W, 3], got {img.shape}")
        h, w = img.shape[:2]
        s = min(1.0, self.max_height / h)
        grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        if s < 1.0:
            grey = cv2.resize(grey, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
        smallest = max(self.min_face, int(MIN_FACE_SHARE * grey.shape[0]))
        rects, weights = self._det.detectMultiScale2(grey, SCALE_STEP, self.min_neighbors, minSize=(smallest, smallest))
        out = []
        for (x, y, bw, bh), sc in zip(rects, np.asarray(weights).reshape(-1)):
            box = (int(round(x / s)), int(round(y / s)), int(round(bw / s)), int(round(bh / s)))
            out.append(Face(box, float(sc)))
        return out


@dataclass
class FaceTrack:
    """One face over a segment: its stable (median) box and what was measured on it."""

    box: tuple[int, int, int, int]
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    hits: int = 0
    activity: float = 0.0  # mouth activity while the audio is loud (mouth_activity)

    @property
    def center(self) -> tuple[float, float]:
        x, y, w, h = self.box
        return x + w / 2, y + h / 2


def track_faces(frames: np.ndarray, detector: FaceDetector, n: int = DETECT_FRAMES) -> list[FaceTrack]:
    """Faces seen on ``n`` evenly spaced frames, grouped by position, left to right.

    A face must be seen on at least a third of the sampled frames (passers-by and false
    detections on one frame are dropped)."""
    k = len(frames)
    if k == 0:
        return []
    idx = np.unique(np.linspace(0, k - 1, min(n, k)).round().astype(int))
    groups: list[list[tuple[int, int, int, int]]] = []
    for i in idx:
        for f in detector.detect(frames[i]):
            cx, cy = f.box[0] + f.box[2] / 2, f.box[1] + f.box[3] / 2
            for g in groups:
                gx, gy, gw, gh = np.median(np.asarray(g), axis=0)
                if abs(cx - (gx + gw / 2)) < 0.5 * gw and abs(cy - (gy + gh / 2)) < 0.5 * gh:
                    g.append(f.box)
                    break
            else:
                groups.append([f.box])
    need = max(1, int(np.ceil(len(idx) / 3)))
    tracks = []
    for g in groups:
        if len(g) < need:
            continue
        med = tuple(int(round(v)) for v in np.median(np.asarray(g), axis=0))
        tracks.append(FaceTrack(box=med, boxes=g, hits=len(g)))  # type: ignore[arg-type]
    tracks.sort(key=lambda t: t.center[0])
    return tracks


def mouth_activity(frames: np.ndarray, times: np.ndarray, box: tuple[int, int, int, int], wave: np.ndarray,
                   wave_start: float, sr: int = 16000) -> float:
    """How much the face's mouth moves while the audio is loud.

    Per pair of consecutive frames: the mean absolute grey-level change in the lower half of the
    box (mouth) minus that in the upper half (eyes and brows: head motion and lighting changes
    that move the whole face cancel), kept when positive, weighted by the audio's RMS between the
    two frames. Returns the weighted mean (grey levels); 0 for fewer than two frames.
    """
    if len(frames) < 2:
        return 0.0
    x, y, w, h = box
    H, W = frames.shape[1:3]
    x0, x1 = max(0, x + w // 5), min(W, x + w - w // 5)
    ym, y1 = max(0, y + h // 2), min(H, y + h)
    yu = max(0, y + h // 8)
    if x1 <= x0 or y1 <= ym or ym <= yu:
        return 0.0
    grey = frames[:, yu:y1, x0:x1].astype(np.float32).mean(axis=3)
    split = ym - yu
    d = np.abs(np.diff(grey, axis=0))
    mouth = d[:, split:].mean(axis=(1, 2))
    eyes = d[:, :split].mean(axis=(1, 2))
    local = np.clip(mouth - eyes, 0, None)
    weights = np.empty(len(local))
    for i in range(len(local)):
        a = int(max(0.0, times[i] - wave_start) * sr)
        b = int(max(0.0, times[i + 1] - wave_start) * sr)
        piece = wave[a:max(b, a + 1)]
        weights[i] = float(np.sqrt(np.mean(piece.astype(np.float64) ** 2))) if piece.size else 0.0
    if weights.sum() <= 0:
        return float(local.mean())
    return float((local * weights).sum() / weights.sum())


def choose_speaker(tracks: list[FaceTrack], frames: np.ndarray, times: np.ndarray, wave: np.ndarray,
                   wave_start: float) -> int | None:
    """Index into ``tracks`` of the speaking face (highest :func:`mouth_activity`); None if no face."""
    if not tracks:
        return None
    if len(tracks) == 1:
        return 0
    for t in tracks:
        t.activity = mouth_activity(frames, times, t.box, wave, wave_start)
    return int(np.argmax([t.activity for t in tracks]))


def crop_box_for(face: tuple[int, int, int, int], width: int, height: int) -> tuple[int, int, int, int]:
    """The crop ``(x, y, w, h)`` around a face box with the training crops' framing, kept inside the
    frame (shifted, not squeezed, where it can be)."""
    x, y, w, h = face
    ch = CROP_HEIGHT * h
    cw = ch * CROP_ASPECT
    cx, cy = x + w / 2, y + h / 2 - CROP_RAISE * h
    cw, ch = min(cw, width), min(ch, height)
    x0 = min(max(0.0, cx - cw / 2), width - cw)
    y0 = min(max(0.0, cy - ch / 2), height - ch)
    return int(round(x0)), int(round(y0)), max(1, int(round(cw))), max(1, int(round(ch)))
