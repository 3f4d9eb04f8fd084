"""How much does an image encoder know about which way the triangle will move? (issue 8)

The tiny demo model reads the motion direction from the first frame only weakly (direction
cosine 0.41, weights/README.md). This script measures where that information is lost:

    # 1. Linear probe: is the direction in a trained model's image embedding?
    python scripts/probe_direction.py probe --model svd_core/weights/svd_core_tiny_demo.safetensors

    # 2. Is the direction in the VAE latent of the first frame, which the UNet sees? A small CNN
    #    (three 3x3 convs, max-pooled, linear), trained to classify the 8 directions from it;
    #    `--pixels` trains the same CNN on the frame average-pooled to the latent's 8x8 instead.
    python scripts/probe_direction.py latent --model svd_core/weights/svd_core_tiny_demo.safetensors [--pixels]

    # 3. Can the tiny ViT learn it at all? A fresh tiny_demo image encoder plus a linear head,
    #    trained to regress the direction (cos, sin) from the first frame.
    python scripts/probe_direction.py regress --steps 800 [--lr 1e-3] [--patch 14] [--two-tone]

All print held-out numbers on MovingShapes("heldout") clips: the 8-way accuracy of the probe
(chance 0.125), and for `regress` the mean cosine between predicted and true direction (0 for a
constant prediction) and the loss (1.0 for the constant prediction (0, 0)).

`--two-tone` recolours the part of the triangle ahead of its centroid (along the motion) with the
inverse colour, after rendering. Why that matters: with the shape at a random position, a feature
that pools a second-order statistic of the image over positions (a power spectrum) cannot tell a
shape from its 180-degree rotation, so it gives the axis of motion but not which way along it;
telling the apex from the base needs third-order features, which small networks find slowly. A
front of another colour makes the sign visible to second-order, cross-channel statistics.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time

import torch

import svd_core
from svd_core import SVDConfig, SVDModel
from svd_core.data import MovingShapes


def first_frames(
    split: str, start: int, count: int, two_tone: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """First frames (N, 3, 64, 64) in [-1, 1] and motion directions (N, 2) of clips start...start+N-1."""
    dataset = MovingShapes(split, num_frames=2, size=64)
    batch = dataset.batch(range(start, start + count))
    frames, direction = batch["frames"][:, 0], batch["direction"]
    if two_tone:
        frames = recolour_front(dataset, range(start, start + count), frames, direction)
    return frames, direction


def recolour_front(dataset, indices, frames: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Frames with the triangle's pixels ahead of its centroid (along `direction`) in -colour."""
    params = [dataset.params(int(i)) for i in indices]
    centre = torch.tensor([dataset.positions(p)[0] for p in params], dtype=torch.float32)  # (N, 2)
    colour = torch.tensor([p.colour for p in params], dtype=torch.float32)[:, :, None, None]
    pixel = torch.arange(frames.shape[-1], dtype=torch.float32)
    x, y = pixel[None, None, :], pixel[None, :, None]
    ahead = (x - centre[:, 0, None, None]) * direction[:, 0, None, None] + (
        y - centre[:, 1, None, None]
    ) * direction[:, 1, None, None]  # (N, H, W)
    inside = (frames - colour).abs().amax(1) < 1e-4  # pixels fully covered by the triangle
    front = (inside & (ahead > 0))[:, None]
    return torch.where(front, -colour.expand_as(frames), frames)


def eight_way(vectors: torch.Tensor) -> torch.Tensor:
    """The nearest of the 8 directions (multiples of 45 degrees) of each (N, 2) vector, as 0..7."""
    return (torch.round(torch.atan2(vectors[:, 1], vectors[:, 0]) / (math.pi / 4)) % 8).long()


def fit_classifier(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    steps: int,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
) -> tuple[float, float]:
    """Train `net` on (features, labels 0..7) with cross-entropy, 128 random rows a step; return
    its accuracy on the training set and on the test set."""
    features, labels = train
    for _ in range(steps):
        rows = torch.randint(0, len(features), (128,))
        loss = torch.nn.functional.cross_entropy(net(features[rows]), labels[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return tuple((net(x).argmax(1) == y).float().mean().item() for x, y in (train, test))


def probe(model_path: str, train: int, test: int, steps: int) -> None:
    """Fit a linear 8-way classifier of the direction on a model's image embeddings."""
    model = svd_core.load(model_path).eval()

    def embed(frames: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([model.image_encoder(part).flatten(1) for part in frames.split(256)])

    x_train, d_train = first_frames("train", 0, train)
    x_test, d_test = first_frames("heldout", 0, test)
    e_train, e_test = embed(x_train), embed(x_test)
    mean, std = e_train.mean(0), e_train.std(0) + 1e-6
    e_train, e_test = (e_train - mean) / std, (e_test - mean) / std
    y_train, y_test = eight_way(d_train), eight_way(d_test)
    head = torch.nn.Linear(e_train.shape[1], 8)
    optimizer = torch.optim.AdamW(head.parameters(), 3e-3, weight_decay=1e-3)
    accuracy_train, accuracy_test = fit_classifier(
        head, optimizer, steps, (e_train, y_train), (e_test, y_test)
    )
    print(
        f"linear probe of {model_path}'s image embedding ({e_train.shape[1]} numbers), 8 directions: "
        f"train accuracy {accuracy_train:.3f} ({train} clips), held-out {accuracy_test:.3f} "
        f"({test} clips); chance 0.125"
    )


def latent_probe(model_path: str, pixels: bool, train: int, test: int, steps: int) -> None:
    """Train a small CNN to classify the 8 directions from the first frame's scaled VAE latent."""
    model = svd_core.load(model_path).eval()
    factor = model.config.vae.scaling_factor
    dtype = next(model.vae.parameters()).dtype

    def features(frames: torch.Tensor) -> torch.Tensor:  # (N, 3, 64, 64) -> (N, C, 8, 8)
        if pixels:
            return torch.nn.functional.avg_pool2d(frames, 8)
        with torch.no_grad():
            return (
                torch.cat([model.vae.encode(part.to(dtype)) for part in frames.split(256)]).float()
                * factor
            )

    x_train, d_train = first_frames("train", 0, train)
    x_test, d_test = first_frames("heldout", 0, test)
    f_train, f_test = features(x_train), features(x_test)
    y_train, y_test = eight_way(d_train), eight_way(d_test)
    torch.manual_seed(0)
    width, channels = 64, f_train.shape[1]
    net = torch.nn.Sequential(
        torch.nn.Conv2d(channels, width, 3, padding=1),
        torch.nn.SiLU(),
        torch.nn.Conv2d(width, width, 3, padding=1),
        torch.nn.SiLU(),
        torch.nn.Conv2d(width, width, 3, padding=1),
        torch.nn.SiLU(),
        torch.nn.AdaptiveMaxPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(width, 8),
    )
    optimizer = torch.optim.AdamW(net.parameters(), 2e-3)
    accuracy_train, accuracy_test = fit_classifier(
        net, optimizer, steps, (f_train, y_train), (f_test, y_test)
    )
    what = "the frame average-pooled to 8x8" if pixels else f"{model_path}'s VAE latent"
    print(
        f"CNN probe of {what} {tuple(f_train.shape[1:])}, 8 directions: train accuracy "
        f"{accuracy_train:.3f} ({train} clips), held-out {accuracy_test:.3f} ({test} clips); "
        "chance 0.125"
    )


def regress(steps: int, lr: float, patch: int, two_tone: bool, batch: int, test: int) -> None:
    """Train a fresh tiny_demo image encoder + linear head to regress the direction."""
    cfg = SVDConfig.tiny_demo()
    cfg = dataclasses.replace(
        cfg, image_encoder=dataclasses.replace(cfg.image_encoder, patch_size=patch)
    )
    torch.manual_seed(0)
    encoder = SVDModel(cfg).image_encoder
    head = torch.nn.Linear(cfg.image_encoder.embed_dim, 2)
    params = [*encoder.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr, weight_decay=0.01)
    x_test, d_test = first_frames("heldout", 0, test, two_tone)
    began = time.perf_counter()
    for step in range(steps):
        warmup = min(1.0, (step + 1) / 50)
        cosine = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = lr * warmup * cosine
        x, d = first_frames("train", step * batch, batch, two_tone)
        loss = (head(encoder(x).flatten(1)) - d).square().sum(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 200 == 0 or step == steps - 1:
            with torch.no_grad():
                predicted = head(encoder(x_test).flatten(1))
            test_loss = (predicted - d_test).square().sum(1).mean().item()
            cosine_score = torch.nn.functional.cosine_similarity(predicted, d_test).mean().item()
            accuracy = (eight_way(predicted) == eight_way(d_test)).float().mean().item()
            print(
                f"step {step:4d}  held-out loss {test_loss:.3f}  cosine {cosine_score:+.3f}  "
                f"8-way {accuracy:.3f}  ({time.perf_counter() - began:.0f} s)",
                flush=True,
            )


def main() -> None:
    """Command line: `probe`, `latent` or `regress` (module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("probe", help="linear probe of a model's image embedding")
    p.add_argument("--model", required=True)
    p.add_argument("--train", type=int, default=4096, help="training clips")
    p.add_argument("--test", type=int, default=512, help="held-out clips")
    p.add_argument("--steps", type=int, default=2000)
    q = commands.add_parser("latent", help="CNN probe of the first frame's VAE latent")
    q.add_argument("--model", required=True)
    q.add_argument("--pixels", action="store_true", help="probe 8x8-pooled pixels instead")
    q.add_argument("--train", type=int, default=4096, help="training clips")
    q.add_argument("--test", type=int, default=512, help="held-out clips")
    q.add_argument("--steps", type=int, default=600)
    r = commands.add_parser("regress", help="train a fresh tiny ViT to regress the direction")
    r.add_argument("--steps", type=int, default=800)
    r.add_argument("--lr", type=float, default=1e-3)
    r.add_argument("--patch", type=int, default=14, help="ViT patch size (56 px input)")
    r.add_argument("--two-tone", action="store_true", help="front of the triangle recoloured")
    r.add_argument("--batch", type=int, default=64)
    r.add_argument("--test", type=int, default=512, help="held-out clips")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.command == "probe":
        probe(args.model, args.train, args.test, args.steps)
    elif args.command == "latent":
        latent_probe(args.model, args.pixels, args.train, args.test, args.steps)
    else:
        regress(args.steps, args.lr, args.patch, args.two_tone, args.batch, args.test)


if __name__ == "__main__":
    main()
