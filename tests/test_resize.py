import pytest
import torch

from semcorr.data.resize import RESIZE_MODES, resize_image, target_size, to_network, to_original


@pytest.mark.parametrize("mode", RESIZE_MODES)
@pytest.mark.parametrize("hw", [(120, 200), (301, 97), (64, 64)])
def test_keypoint_round_trip(mode, hw):
    h, w = hw
    image = torch.rand(3, h, w)
    net, frame, content = resize_image(image, 224, mode, divisor=14)
    assert net.shape[-2] % 14 == 0 and net.shape[-1] % 14 == 0
    pts = torch.rand(50, 2) * torch.tensor([w - 1, h - 1])
    back = to_original(to_network(pts, frame), frame)
    assert torch.allclose(back, pts, atol=1e-4)
    # batched form agrees with the single form
    batched = to_original(to_network(pts[None], frame[None]), frame[None])[0]
    assert torch.allclose(batched, pts, atol=1e-4)


@pytest.mark.parametrize("mode", RESIZE_MODES)
def test_corners_map_to_corners(mode):
    h, w = 100, 150
    _, frame, content = resize_image(torch.rand(3, h, w), 224, mode, divisor=8)
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
    net, frame, _ = resize_image(image, 240, "longer_side_pad", divisor=8)
    x, y = to_network(torch.tensor([[80.0, 30.0]]), frame)[0].tolist()
    peak = torch.nonzero(net[0] == net[0].max())[0].tolist()
    assert abs(peak[0] - y) <= 1 and abs(peak[1] - x) <= 1


def test_unknown_mode():
    with pytest.raises(ValueError, match="square"):
        target_size(10, 10, 224, "stretch")
