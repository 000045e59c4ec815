"""bench_segments' training: the checkpoint pattern of fixtures/ckpt with a step that costs
something (an MLP of width --hidden on batches of 256 x 256), 20 epochs x 5 steps, a
checkpoint at each epoch's end: 20 segments. Its step time is what --hidden scales."""

from __future__ import annotations

import argparse

import torch

import auditor

STEPS_PER_EPOCH = 5


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=1, help="updates per logged step")
    args = ap.parse_args()
    with auditor.start_run(name="bench-segments", params=vars(args), seed=0) as run:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(STEPS_PER_EPOCH * 256, 256, generator=g)
        y = torch.randint(0, 10, (STEPS_PER_EPOCH * 256,), generator=g)
        model = torch.nn.Sequential(torch.nn.Linear(256, args.hidden), torch.nn.ReLU(),
                                    torch.nn.Linear(args.hidden, args.hidden), torch.nn.ReLU(),
                                    torch.nn.Linear(args.hidden, 10))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        start = run.resume(model, opt, generators=[g])
        for epoch in range(start // STEPS_PER_EPOCH, args.epochs):
            order = torch.randperm(len(x), generator=g)
            for i in range(STEPS_PER_EPOCH):
                idx = order[i * 256:(i + 1) * 256]
                for _ in range(args.repeat):
                    opt.zero_grad()
                    loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
                    loss.backward()
                    opt.step()
                run.log_metric("loss", loss.item(), step=epoch * STEPS_PER_EPOCH + i)
            run.checkpoint((epoch + 1) * STEPS_PER_EPOCH, model=model, optimizer=opt,
                           generators=[g])


if __name__ == "__main__":
    main()
