"""A toy regression task driven through the real engine (used by the engine, resume and DDP tests)."""
import torch
from torch import nn
from torch.utils.data import Dataset

from utils.data import build_loader, set_loader_epoch
from utils.dist import DistEnv
from utils.engine import Trainer


class ToyData(Dataset):
    def __init__(self, n=48):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 6, generator=g)
        self.y = self.x @ torch.randn(6, 1, generator=g) + 0.1

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


class ToyModel(nn.Module):
    def __init__(self, dropout=0.2):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Dropout(dropout), nn.Linear(16, 1))
        self.head = nn.Linear(1, 1)

    def forward(self, x, y):
        return {"loss_mse": ((self.head(self.net(x)) - y) ** 2).mean()}


def config(epochs=2, **run):
    return {"precision": "fp32", "accelerator": {"CLIP_GRAD_NORM": 1.0, "GRAD_ACCUMULATE_STEPS": 1},
            "optimizer": {"lr": 1e-2, "weight_decay": 0.01, "lr_mult": 2},
            "schedular": {"sched": "linear", "epochs": epochs, "num_warmup_steps": 2},
            "run": {"log_every": 2, "progress": False, **run}}


def make_trainer(cfg, out_dir, env=DistEnv(), batch_size=8, dropout=0.2, seed=0):
    torch.manual_seed(seed)
    model = ToyModel(dropout)
    data = ToyData()
    loader = build_loader(data, batch_size, train=True, rank=env.rank, world_size=env.world_size, seed=seed)

    def batches(epoch, skip):
        set_loader_epoch(loader, epoch, skip)
        return loader

    def evaluate(m):
        return {"neg_mse": -float(((m.head(m.net(data.x)) - data.y) ** 2).mean())}

    steps = len(data) // (batch_size * env.world_size)
    return Trainer(cfg, env, model, output_dir=out_dir, steps_per_epoch=steps, train_batches=batches,
                   evaluate=evaluate, primary_metric="neg_mse", init_params=["head.weight", "head.bias"])
