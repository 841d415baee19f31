"""build_loader: pinned memory and worker persistence follow the device and the split."""
import torch

from utils.data import build_loader


def test_pinned_memory_follows_cuda_unless_asked():
    data = list(range(8))
    assert build_loader(data, 2, train=True).pin_memory == torch.cuda.is_available()
    assert build_loader(data, 2, train=False, pin_memory=False).pin_memory is False
    assert build_loader(data, 2, train=False, pin_memory=True).pin_memory is True


def test_evaluation_workers_persist_training_workers_restart_each_epoch():
    data = list(range(8))
    assert build_loader(data, 2, train=False, num_workers=1).persistent_workers is True
    assert build_loader(data, 2, train=True, num_workers=1).persistent_workers is False
