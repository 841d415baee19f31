"""Gathers with gradients across two gloo processes: full-batch vs the reference's local gradient."""
import os

import torch

from tests.processes import join_group, run_ranks


def _worker(rank, world, port, out_dir):
    from utils.dist import all_gather_with_grad, cleanup_distributed

    join_group(rank, world, port)
    grads = {}
    for mode in ("full", "local"):
        x = torch.tensor([[1.0 + rank], [2.0 + rank]], requires_grad=True)
        gathered = all_gather_with_grad(x, mode)
        # this rank's loss weights every gathered row differently per rank, so the two modes differ
        weights = torch.tensor([[1.0], [2.0], [3.0], [4.0]]) * (rank + 1)
        (gathered * weights).sum().backward()
        grads[mode] = x.grad.clone()
    torch.save(grads, os.path.join(out_dir, f"grads{rank}.pt"))
    cleanup_distributed()


def test_full_and_local_gather_gradients(tmp_path):
    run_ranks(_worker, 2, str(tmp_path))
    g0, g1 = (torch.load(tmp_path / f"grads{r}.pt", weights_only=True) for r in range(2))
    # local: rank r gets only its own loss's weights for its own rows: rank0 rows 0-1 x1, rank1 rows 2-3 x2
    assert g0["local"].flatten().tolist() == [1.0, 2.0]
    assert g1["local"].flatten().tolist() == [6.0, 8.0]
    # full: the sum over both ranks' losses for the rank's rows: (1+2)*w
    assert g0["full"].flatten().tolist() == [3.0, 6.0]
    assert g1["full"].flatten().tolist() == [9.0, 12.0]
