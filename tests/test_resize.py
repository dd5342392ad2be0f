import numpy as np
import pytest
import torch
from PIL import Image

from semcorr.backbones.base import valid_cells
from semcorr.data.resize import RESIZE_MODES, resize_image, target_size, to_network, to_original
from semcorr.matchers.transfer import cell_index


@pytest.mark.parametrize("mode", RESIZE_MODES)
@pytest.mark.parametrize("hw", [(120, 200), (301, 97), (64, 64)])
def test_keypoint_round_trip(mode, hw):
    h, w = hw
    image = torch.rand(3, h, w)
    net, frame, content, _ = resize_image(image, 224, mode, divisor=14)
    assert net.shape[-2] % 14 == 0 and net.shape[-1] % 14 == 0
    pts = torch.rand(50, 2) * torch.tensor([w - 1, h - 1])
    back = to_original(to_network(pts, frame), frame)
    assert torch.allclose(back, pts, atol=1e-4)
    # batched form agrees with the single form
    batched = to_original(to_network(pts[None], frame[None]), frame[None])[0]
    assert torch.allclose(batched, pts, atol=1e-4)


@pytest.mark.parametrize("mode", [m for m in RESIZE_MODES if m != "centre_canvas"])
def test_corners_map_to_corners(mode):
    h, w = 100, 150
    _, frame, content, _ = resize_image(torch.rand(3, h, w), 224, mode, divisor=8)
    ch, cw = content.tolist()
    # the outer pixel edges (-0.5 and w-0.5) map onto the content's outer edges
    edges = to_network(torch.tensor([[-0.5, -0.5], [w - 0.5, h - 0.5]]), frame)
    assert torch.allclose(edges, torch.tensor([[-0.5, -0.5], [cw - 0.5, ch - 0.5]]), atol=1e-5)


def test_modes_geometry():
    assert target_size(100, 200, 224, "square", 14) == (224, 224, 224, 224)
    ch, cw, H, W = target_size(100, 200, 224, "longer_side_pad", 14)
    assert (H, W) == (224, 224) and cw == 224 and ch == 112
    ch, cw, H, W = target_size(100, 200, 224, "longer_side", 14)
    assert (H, W) == (ch, cw) == (112, 224)


def test_pixels_follow_the_mapping():
    # a bright dot at an original pixel stays at the mapped network position
    image = torch.zeros(3, 90, 120)
    image[:, 30, 80] = 1.0
    net, frame, _, _ = resize_image(image, 240, "longer_side_pad", divisor=8)
    x, y = to_network(torch.tensor([[80.0, 30.0]]), frame)[0].tolist()
    peak = torch.nonzero(net[0] == net[0].max())[0].tolist()
    assert abs(peak[0] - y) <= 1 and abs(peak[1] - x) <= 1


def test_unknown_mode():
    with pytest.raises(ValueError, match="square"):
        target_size(10, 10, 224, "stretch")


# ---------------------------------------------------------------------------------------------
# centre_canvas: GeoAware-SC / SD-DINO's canvas (utils/utils_correspondence.py resize,
# utils/utils_dataset.py preprocess_kps_pad), restated here from their documented behaviour.
# ---------------------------------------------------------------------------------------------
def _their_canvas(array: np.ndarray, size: int):
    """The reference canvas: longer side to size, shorter int(np.around(size * short / long)),
    LANCZOS, centred on zeros at (size - new) // 2 along the short axis; and their keypoint map
    x -> x * size / max(h, w) + offset (continuous canvas coordinates)."""
    h, w = array.shape[:2]
    img = Image.fromarray(array)
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    if h <= w:
        new = int(np.around(size * h / w))
        resized = img.resize((size, new), Image.Resampling.LANCZOS)
        canvas[(size - new) // 2:(size - new) // 2 + new] = np.asarray(resized)
        offset = (0, int((size - new) / 2))
    else:
        new = int(np.around(size * w / h))
        resized = img.resize((new, size), Image.Resampling.LANCZOS)
        canvas[:, (size - new) // 2:(size - new) // 2 + new] = np.asarray(resized)
        offset = (int((size - new) / 2), 0)
    scale = size / max(h, w)
    return canvas, (lambda kps: kps * scale + torch.tensor(offset, dtype=torch.float64)), scale, offset


# landscape / portrait, odd padding on each axis (840 - 271 = 569), even padding, square
@pytest.mark.parametrize("hw", [(97, 301), (301, 97), (120, 200), (200, 120), (333, 500), (64, 64)])
def test_centre_canvas_equals_the_reference(hw):
    h, w = hw
    g = torch.Generator().manual_seed(h * 1000 + w)
    array = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy()
    image = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    net, frame, content, top_left = resize_image(image, 840, "centre_canvas", divisor=14)
    canvas, their_map, scale, offset = _their_canvas(array, 840)
    # the pixels, bit for bit
    assert torch.equal((net * 255).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(canvas))
    # the content box
    ch, cw = content.tolist()
    top, left = top_left.tolist()
    assert (left, top) == offset and net[:, top:top + ch, left:left + cw].amax((0, 1)).gt(0).all()
    assert net[:, :, :left].abs().sum() == 0 and net[:, :, left + cw:].abs().sum() == 0
    assert net[:, :top].abs().sum() == 0 and net[:, top + ch:].abs().sum() == 0
    # keypoints: their continuous canvas coordinate u is our pixel-index coordinate + 0.5
    kps = torch.rand(200, 2, generator=g, dtype=torch.float64) * torch.tensor([w - 1.0, h - 1.0])
    kps = torch.cat([kps, kps.round(), torch.tensor([[0.0, 0.0], [w - 1.0, h - 1.0]])])
    ours = to_network(kps.float(), frame).double()
    assert torch.allclose(ours + 0.5, their_map(kps), atol=2e-4)
    # the cell of every keypoint is theirs: int(u * 60 / 840), unless u sits on a cell border
    u = their_map(kps)
    theirs = (u * 60 / 840).floor().long()
    away = ((u / 14 - (u / 14).round()).abs() > 1e-3).all(1)
    cells = cell_index(ours[None].float(), (60, 60), 14)[0]
    assert torch.equal(cells[away], (theirs[:, 1] * 60 + theirs[:, 0])[away])
    # a prediction at a cell centre (theirs 14 c + 7) maps back to (14 c + 7 - offset) / scale
    c = torch.arange(60, dtype=torch.float32)
    centres = torch.stack([c * 14 + 6.5, c * 14 + 6.5], -1)
    expected = (torch.stack([c * 14 + 7, c * 14 + 7], -1).double() - torch.tensor(offset)) / scale
    assert torch.allclose(to_original(centres, frame).double(), expected, atol=2e-4)
    # round trip, and original pixels stay original pixels
    assert torch.allclose(to_original(ours.float(), frame).double(), kps, atol=2e-4)


@pytest.mark.parametrize("hw", [(97, 301), (301, 97)])
def test_centre_canvas_valid_cells_follow_the_content(hw):
    h, w = hw
    net, frame, content, top_left = resize_image(torch.rand(3, h, w), 840, "centre_canvas", divisor=14)
    mask = valid_cells(content[None], (60, 60), 14, top_left[None])[0]
    centre = torch.arange(60) * 14 + 6.5
    top, left = top_left.tolist()
    ch, cw = content.tolist()
    rows = (centre >= top) & (centre < top + ch)
    cols = (centre >= left) & (centre < left + cw)
    assert torch.equal(mask, rows[:, None] & cols[None, :])
    assert not mask[0].all() or not mask[:, 0].all()  # the padding is on both sides, not the top-left
    assert mask.any(0).nonzero().min() > 0 or mask.any(1).nonzero().min() > 0


def test_centre_canvas_geometry():
    assert target_size(301, 97, 840, "centre_canvas", 14) == (840, 271, 840, 840)
    assert target_size(97, 301, 840, "centre_canvas", 14) == (271, 840, 840, 840)
    assert target_size(64, 64, 840, "centre_canvas", 14) == (840, 840, 840, 840)
    # round half to even, as np.around: 840 * 5 / 16 = 262.5 -> 262
    assert target_size(5, 16, 840, "centre_canvas", 14)[0] == 262
