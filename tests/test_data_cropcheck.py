"""``giamic render-crops``: one picture per dialog video with the training crop outlined (spec §9 item 2)."""
import numpy as np
from PIL import Image

from giamic.cli import main
from giamic.data import load_dataset, make_corpus
from giamic.data.cropcheck import BOX_COLOR, draw_box


def test_draw_box_outlines_exactly_the_bounds():
    frame = np.zeros((20, 30, 3), np.uint8)
    out = draw_box(frame, (5, 4, 25, 16), width=2)
    ys, xs = np.nonzero((out == BOX_COLOR).all(-1))
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (5, 4, 25, 16)
    assert not out[8:12, 8:22].any()  # the inside is untouched
    assert not frame.any()  # the input is not modified


def test_render_crops_one_picture_per_dialog_with_the_speaker_side(tmp_path):
    info = make_corpus(tmp_path / "IEMOCAP_full_release", seed=5, n_per_dialog=3, dialogs_per_session=2,
                       dialog_wav=False)
    data = tmp_path / "data"
    assert main(["prepare", str(info.root), "--out", str(data), "--expected-counts",
                 str(info.root / "expected_counts.json")]) == 0
    assert main(["render-crops", str(data), "--out", str(tmp_path / "crops")]) == 0
    ds = load_dataset(data)
    first = {}
    for u in ds.utterances:
        first.setdefault(u.avi, u)
    pngs = sorted((tmp_path / "crops").glob("*.png"))
    assert len(pngs) == len(first) == 10  # 5 sessions x 2 dialogs
    for u in first.values():
        img = np.asarray(Image.open(tmp_path / "crops" / f"{u.dialog}.png").convert("RGB"))
        h, w = img.shape[:2]
        ys, xs = np.nonzero((img == BOX_COLOR).all(-1))
        x0, y0, x1, y1 = u.crop.resolve(w, h)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
        # Marker-wearer rule (spec §4.5): the speaker is on the left iff its gender letter is the dialog's.
        on_left = (x0 + x1) / 2 < w / 2
        assert on_left == (u.utt_id.rsplit("_", 1)[1][0] == u.utt_id[5])
