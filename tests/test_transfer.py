import torch

from semcorr.matchers.transfer import cell_centers, cell_index, transfer_keypoints, transfer_rows


def test_cell_index_and_centres():
    # stride 8: pixel x in [-0.5, 7.5) -> column 0; centre of column c at 8c + 3.5
    pts = torch.tensor([[[0.0, 0.0], [7.4, 7.6], [8.0, 15.0], [100.0, -5.0]]])
    idx = cell_index(pts, (4, 5), 8)
    assert idx.tolist() == [[0, 1 * 5 + 0, 1 * 5 + 1, 0 * 5 + 4]]
    c = cell_centers((4, 5), 8)
    assert c[7].tolist() == [2 * 8 + 3.5, 1 * 8 + 3.5]


def test_argmax_and_soft_argmax_by_hand():
    grid, stride = (3, 3), 10
    rows = torch.full((1, 1, 9), -10.0)
    rows[0, 0, 4] = 1.0  # centre cell, centre (14.5, 14.5)
    rows[0, 0, 5] = 1.0 - 0.02 * torch.log(torch.tensor(3.0))  # right neighbour, 1/3 the weight
    pts, score = transfer_rows(rows, grid, stride, method="argmax")
    assert pts.tolist() == [[[14.5, 14.5]]] and score.item() == 1.0
    pts, _ = transfer_rows(rows, grid, stride, method="soft_argmax", temperature=0.02)
    # weights 3/4 at x=14.5, 1/4 at x=24.5 (the rest ~e^-550)
    assert torch.allclose(pts, torch.tensor([[[14.5 + 2.5, 14.5]]]), atol=1e-4)


def test_window_soft_argmax_ignores_far_cells():
    grid, stride = (1, 9), 1
    rows = torch.zeros(1, 1, 9)
    rows[0, 0, 1] = 5.0
    rows[0, 0, 8] = 4.9  # far away: inside a global soft-argmax, outside a 3-wide window
    glob, _ = transfer_rows(rows, grid, stride, method="soft_argmax", temperature=1.0)
    win, _ = transfer_rows(rows, grid, stride, method="window_soft_argmax", window=3, temperature=1.0)
    assert glob[0, 0, 0] > 3.0
    assert 0.0 < win[0, 0, 0] < 2.0


def test_transfer_keypoints_reads_the_source_cell_row():
    ns, nt = 4, 6
    scores = torch.zeros(1, ns, nt)
    scores[0, 3, 5] = 1.0  # source cell 3 -> target cell 5
    src_kps = torch.tensor([[[1.0 * 4 + 1.5, 1.0 * 4 + 1.5]]])  # cell (1, 1) of a 2x2 grid, stride 4
    pred, _ = transfer_keypoints(scores, src_kps, (2, 2), 4, (2, 3), 4)
    assert pred.tolist() == [[[2 * 4 + 1.5, 1 * 4 + 1.5]]]
