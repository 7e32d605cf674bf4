"""Face detectors on real faces that ship in installed packages, and on generated frames.

The evidence behind the face detector choice in docs/decisions.md ("Recordings"): recall and false
detections of each candidate on

* real photographs available offline: scikit-image's ``astronaut`` and matplotlib's
  ``grace_hopper.jpg`` (frontal faces), each under 12 variants (scale 1, 0.5, 0.3 of 512 px; mirror;
  darker and brighter; rotated by ±10 degrees; both faces side by side in one frame);
* the demo recording's generated faces (``giamic.data.demorecording``), four expressions, mouth open
  and closed, at 426×240 and 640×360 frames.

A detection counts as a hit when its intersection over union with the reference box is >= 0.3 (the
detectors draw boxes of different extents around the same face); any other detection is a false one.

    python bench/faces.py
"""
from __future__ import annotations

import sys
import time

import numpy as np


def _ref_boxes():
    """Reference face boxes (x, y, w, h) drawn by hand on the two photographs."""
    return {"astronaut": (170, 60, 105, 115), "grace_hopper": (165, 115, 205, 235)}


def real_images():
    import matplotlib.cbook as cbook
    from PIL import Image
    from skimage import data

    imgs = {"astronaut": data.astronaut(),
            "grace_hopper": np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))}
    return imgs, _ref_boxes()


def _variants(name, img, box):
    import cv2

    x, y, w, h = box
    out = []
    for s in (1.0, 0.5, 0.3):
        im = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if s != 1 else img
        out.append((f"{name} x{s}", im, [tuple(int(v * s) for v in box)]))
    W = img.shape[1]
    out.append((f"{name} mirrored", img[:, ::-1].copy(), [(W - x - w, y, w, h)]))
    for g in (0.5, 1.5):
        out.append((f"{name} light x{g}", np.clip(img.astype(np.float32) * g, 0, 255).astype(np.uint8), [box]))
    for a in (-10, 10):
        c = (x + w / 2, y + h / 2)
        m = cv2.getRotationMatrix2D(c, a, 1.0)
        out.append((f"{name} rot {a}", cv2.warpAffine(img, m, (img.shape[1], img.shape[0])), [box]))
    return out


def real_cases():
    import cv2

    imgs, boxes = real_images()
    cases = []
    for n, im in imgs.items():
        cases += _variants(n, im, boxes[n])
    # Both faces in one frame, as in an interview: each scaled to 300 px high, side by side.
    parts, refs, x0 = [], [], 0
    for n, im in imgs.items():
        s = 300 / im.shape[0]
        r = cv2.resize(im, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        bx, by, bw, bh = boxes[n]
        refs.append((int(bx * s) + x0, int(by * s), int(bw * s), int(bh * s)))
        parts.append(r)
        x0 += r.shape[1]
    cases.append(("both side by side", np.concatenate(parts, axis=1), refs))
    return cases


def generated_cases():
    from giamic.data.demorecording import render_test_frames

    return render_test_frames()


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    return inter / float(aw * ah + bw * bh - inter)


def score(detect, cases):
    hits = total = false = 0
    t = 0.0
    for _name, img, refs in cases:
        t0 = time.perf_counter()
        dets = detect(img)
        t += time.perf_counter() - t0
        total += len(refs)
        used = set()
        for r in refs:
            best = max(range(len(dets)), key=lambda i: iou(dets[i], r), default=None)
            if best is not None and iou(dets[best], r) >= 0.3:
                hits += 1
                used.add(best)
        false += len(dets) - len(used)
    return hits, total, false, 1000 * t / max(1, len(cases))


def detectors():
    out = {}
    try:
        from giamic.inference.faces import FaceDetector

        d = FaceDetector()
        out["OpenCV Haar cascade (giamic's detector)"] = lambda im: [f.box for f in d.detect(im)]
    except Exception as e:  # noqa: BLE001 - report what is missing
        print(f"OpenCV Haar unavailable: {e}", file=sys.stderr)
    try:
        import dlib

        hog = dlib.get_frontal_face_detector()

        def run_hog(im):
            return [(r.left(), r.top(), r.width(), r.height()) for r in hog(np.ascontiguousarray(im), 0)]

        out["dlib HOG (get_frontal_face_detector, no upsampling)"] = run_hog
        out["dlib HOG, upsampled once"] = lambda im: [(r.left(), r.top(), r.width(), r.height())
                                                      for r in hog(np.ascontiguousarray(im), 1)]
    except Exception as e:  # noqa: BLE001
        print(f"dlib HOG unavailable (pip install dlib-bin): {e}", file=sys.stderr)
    return out


def main() -> int:
    real, gen = real_cases(), generated_cases()
    print(f"{len(real)} real-photo frames ({sum(len(c[2]) for c in real)} faces), "
          f"{len(gen)} generated frames ({sum(len(c[2]) for c in gen)} faces)")
    for name, det in detectors().items():
        h, n, f, ms = score(det, real)
        h2, n2, f2, ms2 = score(det, gen)
        print(f"{name}\n  real photos: {h}/{n} faces found, {f} false detections, {ms:.0f} ms/frame"
              f"\n  generated:   {h2}/{n2} faces found, {f2} false detections, {ms2:.0f} ms/frame")
    return 0


if __name__ == "__main__":
    sys.exit(main())
