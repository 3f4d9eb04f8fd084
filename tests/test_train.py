"""Training (svd_core.train): the losses fall on a fixed batch, the UNet step uses the sampler's
preconditioning and the sampler's unconditional branch, resuming repeats an uninterrupted run bit for
bit, checkpoints are never half-written, export loads back strictly, and the CLI runs end to end."""

from __future__ import annotations

import dataclasses
import math
import os

import pytest
import torch
from helpers import randomize
from torch import nn

import svd_core
import svd_core.cli
import svd_core.train as train
from svd_core import SVDConfig
from svd_core.data import MovingShapes
from svd_core.model import SVDModel
from svd_core.sampling import v_prediction_scalings
from svd_core.unet import UNet
from svd_core.vae import VAE

pytestmark = pytest.mark.usefixtures("one_thread")


def small_config() -> SVDConfig:
    """SVDConfig.tiny() at 32x32 and 4 frames: every block kind, latents 4x4."""
    return dataclasses.replace(
        SVDConfig.tiny(), num_frames=4, decode_chunk_size=4, height=32, width=32
    )


# Few steps, no warm-up (so every step moves), checkpoints every step.
VAE_TC = train.VAETrainConfig(steps=4, batch_size=2, warmup_steps=0, crop_size=16, scale_frames=16)
UNET_TC = train.UNetTrainConfig(steps=4, batch_size=2, warmup_steps=0, pool_size=6)


def clip_frames(count: int, cfg: SVDConfig) -> torch.Tensor:
    """(count, F, 3, H, W) real MovingShapes frames."""
    dataset = MovingShapes("train", num_frames=cfg.num_frames, size=cfg.height, seed=0)
    return MovingShapes.collate([dataset[i] for i in range(count)])["frames"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder with a 4-step VAE stage and a 4-step UNet stage of the small config."""
    path = tmp_path_factory.mktemp("run")
    train.train_vae(path, small_config(), VAE_TC, progress=False)
    train.train_unet(path, UNET_TC, progress=False)
    return path


class Recorder(nn.Module):
    """Wraps the UNet and keeps the inputs of every call; run=False skips the UNet (returns zeros)."""

    def __init__(self, unet: nn.Module, run: bool = True) -> None:
        super().__init__()
        self.unet, self.run, self.calls = unet, run, []

    def forward(self, x, c_noise, context, vector):
        if self.run:
            out = self.unet(x, c_noise, context, vector)
        else:
            out = torch.zeros_like(x[:, :, : self.unet.cfg.out_channels])
        self.calls.append(
            {"x": x, "c_noise": c_noise, "context": context, "vector": vector, "out": out}
        )
        return out


def pool_batch(model: SVDModel, count: int) -> dict[str, torch.Tensor]:
    """`count` real clips encoded as the UNet stage's pool encodes them."""
    cfg = model.config
    dataset = MovingShapes("train", num_frames=cfg.num_frames, size=cfg.height, seed=0)
    return train.encode_pool(model.vae, dataset, count, cfg.vae.scaling_factor, progress=False)


# ---- the losses fall ------------------------------------------------------------------------------


def test_vae_loss_decreases_on_a_fixed_batch():
    cfg = small_config()
    torch.manual_seed(0)
    trained = nn.ModuleDict({"vae": VAE(cfg.vae)})
    tc = train.VAETrainConfig(steps=30, lr=3e-3, warmup_steps=0, ema_decay=0)
    optimizer, ema = train.make_optimizer(trained, tc), train.EMA(trained, tc.ema_decay)
    frames = clip_frames(2, cfg)
    losses = []
    for step in range(tc.steps):
        generator = train.step_generator(0, 0)  # the same draws every step: a fixed objective

        def loss(generator=generator):
            return train.vae_loss(trained["vae"], frames, tc, generator)[0]

        losses.append(train.train_step(trained, optimizer, ema, loss, tc, step))
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.7 * first, (first, last)  # measured about 0.6 * first


def test_unet_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    model = SVDModel(small_config())
    batch = pool_batch(model, 2)
    trained = nn.ModuleDict({"unet": model.unet, "image_encoder": model.image_encoder})
    tc = train.UNetTrainConfig(steps=30, lr=1e-3, warmup_steps=0, ema_decay=0, cond_dropout=0)
    optimizer, ema = train.make_optimizer(trained, tc), train.EMA(trained, tc.ema_decay)
    losses = []
    for step in range(tc.steps):
        generator = train.step_generator(0, 0)  # fixed sigmas, noise and cond_aug: overfit them

        def loss(generator=generator):
            return train.unet_loss(model, batch, tc, generator)[0]

        losses.append(train.train_step(trained, optimizer, ema, loss, tc, step))
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.5 * first, (first, last)


def test_detail_weights_are_one_on_flat_ground_and_larger_on_a_shape():
    frames = torch.full((1, 1, 3, 24, 24), 0.3)
    frames[..., 10:14, 10:14] = -0.5  # a 4x4 square
    weights = train.detail_weights(frames, strength=20.0)
    assert weights.shape == (1, 1, 1, 24, 24)
    # More than 3 px (half the 7-px window) from the square, nothing differs from the local mean.
    far = torch.ones(24, 24, dtype=torch.bool)
    far[7:17, 7:17] = False
    # (up to the round-off of averaging 49 equal float32 values)
    torch.testing.assert_close(weights[0, 0, 0][far], torch.ones(int(far.sum())), atol=1e-5, rtol=0)
    # On the square: |x - local mean| = 0.8 * (1 - 16/49) at its centre pixels' 7x7 windows.
    expected_centre = 1 + 20.0 * 0.8 * (1 - 16 / 49)
    torch.testing.assert_close(weights[0, 0, 0, 12, 12], torch.tensor(expected_centre))
    assert torch.equal(train.detail_weights(frames, strength=0.0), torch.ones_like(weights))


def test_vae_loss_without_detail_weight_is_plain_l1_plus_mse_plus_kl():
    cfg = small_config()
    torch.manual_seed(0)
    vae = VAE(cfg.vae)
    frames = clip_frames(2, cfg)
    tc = train.VAETrainConfig(detail_weight=0.0, kl_weight=1e-3)
    loss, parts = train.vae_loss(vae, frames, tc, train.step_generator(0, 0))
    expected = parts["l1"] + parts["mse"] + 1e-3 * parts["kl"]
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    weighted, _ = train.vae_loss(
        vae, frames, dataclasses.replace(tc, detail_weight=20.0), train.step_generator(0, 0)
    )
    assert weighted.item() != pytest.approx(expected, rel=1e-3)  # the weights do change the loss


# ---- the UNet step is the sampler's denoiser --------------------------------------------------------


def test_training_preconditioning_matches_v_prediction_scalings():
    torch.manual_seed(0)
    model = SVDModel(small_config())
    randomize(model.unet)  # a fresh UNet outputs zeros (zero conv_out), which would hide c_out
    batch = pool_batch(model, 3)
    model.unet = Recorder(model.unet)
    tc = train.UNetTrainConfig(cond_dropout=0)
    loss, draws = train.unet_loss(model, batch, tc, train.step_generator(0, 5))
    (call,) = model.unet.calls
    sigma, x0 = draws["sigma"], batch["latents"]
    column = (-1, 1, 1, 1, 1)
    c_skip, c_out, c_in, c_noise = (c.reshape(column) for c in v_prediction_scalings(sigma))
    noisy = x0 + sigma.reshape(column) * draws["noise"]
    latent_channels = x0.shape[2]

    torch.testing.assert_close(call["c_noise"], 0.25 * sigma.log(), rtol=0, atol=0)
    torch.testing.assert_close(call["x"][:, :, :latent_channels], c_in * noisy)
    # The image latent: the frozen VAE's mode of the noise-augmented first frame, unscaled, the same
    # for every frame.
    noisy_image = (
        batch["first_frame"] + draws["cond_aug"].reshape(-1, 1, 1, 1) * draws["cond_noise"]
    )
    image_latent = model.vae.encode(noisy_image)
    for frame in range(x0.shape[1]):
        torch.testing.assert_close(call["x"][:, frame, latent_channels:], image_latent)
    denoised = c_skip * noisy + c_out * call["out"]
    weight = (sigma**2 + 1) / sigma**2
    expected = (weight * (denoised - x0).square().mean(dim=(1, 2, 3, 4))).mean()
    torch.testing.assert_close(loss, expected)


def test_each_clip_of_a_batch_reaches_the_unet_with_its_own_fps_motion_and_cond_aug():
    """Two clips with different fps and motion buckets: the UNet's vector holds, row by row, each
    clip's own embed_added(fps - 1, motion_bucket_id, cond_aug), with each clip's own cond_aug
    draw (the community scripts' fixed fps 7 / motion 127 / first clip's cond_aug would fail)."""
    from svd_core import embed_added

    torch.manual_seed(0)
    model = SVDModel(small_config())
    batch = pool_batch(model, 2)
    batch["fps"] = torch.tensor([6.0, 14.0])
    batch["motion_bucket_id"] = torch.tensor([20.0, 240.0])
    model.unet = Recorder(model.unet, run=False)
    tc = train.UNetTrainConfig(cond_dropout=0)
    with torch.no_grad():
        _, draws = train.unet_loss(model, batch, tc, train.step_generator(0, 1))
    (call,) = model.unet.calls
    assert draws["cond_aug"][0] != draws["cond_aug"][1]
    for clip in range(2):
        expected = embed_added(
            batch["fps"][clip : clip + 1] - 1,
            batch["motion_bucket_id"][clip : clip + 1],
            draws["cond_aug"][clip : clip + 1],
            dim=model.config.unet.addition_embed_dim,
        )[0]
        torch.testing.assert_close(call["vector"][clip], expected, rtol=0, atol=0)
    assert not torch.equal(call["vector"][0], call["vector"][1])


def test_noise_levels_are_log_normal_one_per_clip():
    tc = train.UNetTrainConfig(p_mean=0.3, p_std=1.2, cond_aug_mean=-3.0, cond_aug_std=0.5)
    model = SVDModel(small_config())
    model.unet = Recorder(model.unet, run=False)
    batch = {k: v.expand(400, *v.shape[1:]) for k, v in pool_batch(model, 1).items()}
    with torch.no_grad():
        _, draws = train.unet_loss(model, batch, tc, train.step_generator(0, 0))
    log_sigma, log_aug = draws["sigma"].log(), draws["cond_aug"].log()
    assert draws["sigma"].shape == (400,)
    # 400 draws: the sample mean is within 4 standard errors, the std within 15%.
    assert abs(log_sigma.mean() - 0.3) < 4 * 1.2 / 20 and abs(log_sigma.std() / 1.2 - 1) < 0.15
    assert abs(log_aug.mean() + 3.0) < 4 * 0.5 / 20 and abs(log_aug.std() / 0.5 - 1) < 0.15


def test_conditioning_dropout_zeroes_exactly_embedding_and_latent_at_the_rate():
    torch.manual_seed(0)
    model = SVDModel(small_config())
    model.unet = Recorder(model.unet, run=False)
    clips = 200
    batch = {
        k: v.repeat(clips // 4, *([1] * (v.ndim - 1))) for k, v in pool_batch(model, 4).items()
    }
    latent_channels = batch["latents"].shape[2]
    inputs = {}
    for p in (0.0, 0.3):
        with torch.no_grad():
            _, draws = train.unet_loss(
                model, batch, train.UNetTrainConfig(cond_dropout=p), train.step_generator(3, 7)
            )
        call = model.unet.calls[-1]
        inputs[p] = (call["context"], call["x"][:, :, latent_channels:], draws["keep"])
    full_context, full_latent, kept_all = inputs[0.0]
    context, latent, keep = inputs[0.3]
    assert kept_all.all()
    # Binomial(200, 0.7): 4 standard deviations is 0.13.
    assert abs(keep.float().mean().item() - 0.7) < 0.13
    assert (~keep).any() and keep.any()
    # Dropped clips: exactly the sampler's unconditional branch (zeros); kept ones: untouched.
    assert (context[~keep] == 0).all() and (latent[~keep] == 0).all()
    torch.testing.assert_close(context[keep], full_context[keep], rtol=0, atol=0)
    torch.testing.assert_close(latent[keep], full_latent[keep], rtol=0, atol=0)
    assert (full_context != 0).any(dim=-1).all()
    # Seeded: the same (seed, step) gives the same clips dropped; another step others.
    draws_again = train.unet_loss(
        model, batch, train.UNetTrainConfig(cond_dropout=0.3), train.step_generator(3, 7)
    )[1]
    draws_other = train.unet_loss(
        model, batch, train.UNetTrainConfig(cond_dropout=0.3), train.step_generator(3, 8)
    )[1]
    assert torch.equal(draws_again["keep"], keep) and not torch.equal(draws_other["keep"], keep)


def test_drop_conditioning_keeps_the_vector():
    cond = svd_core.conditioning.Conditioning(
        torch.ones(3, 1, 8), torch.ones(3, 4, 2, 2), torch.full((3, 6), 2.0)
    )
    dropped = train.drop_conditioning(cond, torch.tensor([True, False, True]))
    assert dropped.context[:, 0, 0].tolist() == [1.0, 0.0, 1.0]
    assert dropped.image_latent[:, 0, 0, 0].tolist() == [1.0, 0.0, 1.0]
    assert torch.equal(dropped.vector, cond.vector)


# ---- checkpoints and resume -------------------------------------------------------------------------


class Interrupt(KeyboardInterrupt):
    """The Ctrl-C the tests send."""


def interrupt_after(monkeypatch, module, name: str, calls: int) -> None:
    """Make `module.<name>` (e.g. svd_core.train.vae_stage.vae_loss, where train_vae looks it up)
    raise a KeyboardInterrupt on its (calls + 1)-th call."""
    original, count = getattr(module, name), [0]

    def wrapper(*args, **kwargs):
        count[0] += 1
        if count[0] > calls:
            raise Interrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)


def assert_same_state(a, b) -> None:
    """Nested dicts / lists of tensors and numbers, equal bit for bit."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same_state(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same_state(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b


@pytest.mark.parametrize("stage", ["vae", "unet"])
def test_resume_after_an_interrupt_equals_an_uninterrupted_run(
    tmp_path, monkeypatch, run_dir, stage
):
    # Bit-exact: step s draws from a generator seeded by (seed, s), reads the samples of the global
    # counter s * batch_size..., and the model, EMA and AdamW states are saved exactly; the CPU
    # kernels are deterministic for the same shapes and thread count.
    cfg = small_config()
    tc = dataclasses.replace(VAE_TC if stage == "vae" else UNET_TC, checkpoint_every=2)

    def run(folder, resume=False):
        if stage == "vae":
            return train.train_vae(folder, cfg, tc, resume=resume, progress=False)
        (folder / "vae").mkdir(parents=True, exist_ok=True)
        final = run_dir / "vae" / train.VAE_FINAL_NAME
        (folder / "vae" / train.VAE_FINAL_NAME).write_bytes(final.read_bytes())
        return train.train_unet(folder, tc, resume=resume, progress=False)

    straight = tmp_path / "straight"
    run(straight)
    resumed = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        if stage == "vae":
            interrupt_after(patch, train.vae_stage, "vae_loss", 3)
        else:
            interrupt_after(patch, train.unet_stage, "unet_loss", 3)
        with pytest.raises(Interrupt):
            run(resumed)
    saved = train.load_checkpoint(resumed / stage / train.CHECKPOINT_NAME)
    assert saved["step"] == 2 and saved["samples_seen"] == 2 * tc.batch_size
    with pytest.raises(train.TrainingError, match="--resume"):
        run(resumed)
    result = run(resumed, resume=True)
    assert len(result["losses"]) == 2
    a = train.load_checkpoint(straight / stage / train.CHECKPOINT_NAME)
    b = train.load_checkpoint(resumed / stage / train.CHECKPOINT_NAME)
    assert a["step"] == b["step"] == 4
    assert_same_state(a, b)
    if stage == "vae":
        assert_same_state(
            train.load_checkpoint(straight / "vae" / train.VAE_FINAL_NAME),
            train.load_checkpoint(resumed / "vae" / train.VAE_FINAL_NAME),
        )


def test_resume_with_other_settings_is_refused(tmp_path):
    cfg = small_config()
    tc = dataclasses.replace(VAE_TC, steps=1)
    train.train_vae(tmp_path, cfg, tc, progress=False)
    with pytest.raises(train.TrainingError, match="lr"):
        train.train_vae(
            tmp_path, cfg, dataclasses.replace(tc, lr=1e-2), resume=True, progress=False
        )
    # More steps is fine: it continues the run.
    result = train.train_vae(
        tmp_path, cfg, dataclasses.replace(tc, steps=2), resume=True, progress=False
    )
    assert len(result["losses"]) == 1


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    train.save_checkpoint(path, {"step": 1, "weights": torch.arange(4.0)})
    real_save = torch.save

    def failing_save(obj, target):
        real_save(obj, target)
        with open(target, "r+b") as handle:  # a partial file, then the failure
            handle.truncate(10)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        train.save_checkpoint(path, {"step": 2, "weights": torch.zeros(4)})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["checkpoint.pt"]
    saved = train.load_checkpoint(path)
    assert saved["step"] == 1 and torch.equal(saved["weights"], torch.arange(4.0))


# ---- export -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [None, torch.float16])
def test_export_loads_back_strictly_with_the_ema_weights(run_dir, tmp_path, dtype):
    path = train.export(run_dir, tmp_path / "model.safetensors", dtype=dtype)
    model = svd_core.load(path)  # the config comes from the file's metadata; every key used once
    final = train.load_checkpoint(run_dir / "vae" / train.VAE_FINAL_NAME)
    unet_checkpoint = train.load_checkpoint(run_dir / "unet" / train.CHECKPOINT_NAME)
    assert model.config.vae.scaling_factor == pytest.approx(1 / final["latent_std"], rel=1e-12)
    assert model.config.vae.scaling_factor != SVDConfig.tiny().vae.scaling_factor
    expected = {**unet_checkpoint["ema"], **{f"vae.{k}": v for k, v in final["vae"].items()}}
    state = model.state_dict()
    assert state.keys() == expected.keys()
    for name, tensor in expected.items():
        wanted = tensor if dtype is None else tensor.to(dtype).float()
        assert torch.equal(state[name], wanted), name
    # The EMA is not the live weights (decay 0.999 after 4 steps, with warm-up).
    assert any(
        not torch.equal(unet_checkpoint["model"][k], unet_checkpoint["ema"][k])
        for k in unet_checkpoint["ema"]
    )


# ---- configuration and the command line -------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, field",
    [
        ({"steps": 0}, "steps"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"cond_dropout": 1.5}, "cond_dropout"),
        ({"lr": -1.0}, "lr"),
    ],
)
def test_bad_settings_are_errors_that_name_them(settings, field):
    with pytest.raises(train.TrainingError, match=field):
        train.UNetTrainConfig(**settings)


def test_learning_rate_warms_up_then_decays():
    tc = train.TrainConfig(steps=100, lr=1.0, warmup_steps=10, lr_final_ratio=0.1)
    assert train.learning_rate(tc, 0) == pytest.approx(0.1)
    assert train.learning_rate(tc, 9) == pytest.approx(1.0)
    assert train.learning_rate(tc, 99) == pytest.approx(0.1)
    rates = [train.learning_rate(tc, s) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))


def test_cli_trains_both_stages_and_exports(tmp_path, capsys):
    config = tmp_path / "config.json"
    small_config().to_json(config)
    out = tmp_path / "run"
    common = ["--out", str(out), "--steps", "2", "--batch-size", "2", "--quiet", "--device", "cpu"]
    vae = ["train", "vae", *common, "--config", str(config), "--crop-size", "16"]
    assert svd_core.cli.main(vae) == 0
    assert "vae: 2 steps" in capsys.readouterr().out
    # --fsdp in one process: nothing to shard, it trains unwrapped (FSDP: tests/test_distributed.py)
    unet = ["train", "unet", *common, "--pool-size", "4", "--p-mean", "0.7", "--p-std", "1.2"]
    assert svd_core.cli.main([*unet, "--fsdp"]) == 0
    assert "unet: 2 steps" in capsys.readouterr().out
    saved = train.load_checkpoint(out / "unet" / train.CHECKPOINT_NAME)["train_config"]
    assert (saved["p_mean"], saved["p_std"], saved["pool_size"]) == (0.7, 1.2, 4)
    # Again without --resume: one-line error, exit code 2, the checkpoint untouched.
    assert svd_core.cli.main(["train", "unet", *common, "--pool-size", "4"]) == 2
    assert "--resume" in capsys.readouterr().err
    target = tmp_path / "model.safetensors"
    export = ["train", "export", str(out), "-o", str(target), "--dtype", "float16"]
    assert svd_core.cli.main(export) == 0
    model = svd_core.load(target)
    assert model.config.height == 32 and model.config.num_frames == 4
    assert next(model.unet.parameters()).dtype == torch.float32  # load converts to float32


def test_cli_unet_stage_without_a_vae_stage_is_a_clear_error(tmp_path, capsys):
    assert svd_core.cli.main(["train", "unet", "--out", str(tmp_path), "--quiet"]) == 2
    assert "vae" in capsys.readouterr().err


# ---- initialization for training from scratch ------------------------------------------------------


@pytest.mark.parametrize("initialized", [False, True], ids=["constructed", "init_for_training"])
def test_every_residual_block_starts_as_the_identity(initialized):
    """Zeroed last layers (svd_core.nn.zero_module at construction, kept by init_for_training):
    every res block returns its skip path, every attention block its input, every transformer
    adds nothing; the UNet's output is zero, so the denoiser starts as c_skip * x. After
    init_for_training the video decoder's temporal output conv also passes frames through."""
    from svd_core.nn import ResBlock
    from svd_core.unet import SpatioTemporalTransformer
    from svd_core.vae import AttentionBlock

    torch.manual_seed(0)
    model = SVDModel(small_config())
    if initialized:
        train.init_for_training(model.vae)
        train.init_for_training(model.unet)
    counts = {"res": 0, "attention": 0, "transformer": 0}
    for module in [*model.vae.modules(), *model.unet.modules()]:
        if isinstance(module, ResBlock):
            channels = module.conv1.in_channels
            # temporal blocks take (B, C, F, H, W) and a per-frame embedding (B, F, E)
            h = (
                torch.randn(2, channels, 3, 4, 4)
                if module.temporal
                else torch.randn(2, channels, 4, 4)
            )
            emb = None
            if module.emb_proj is not None:
                width = module.emb_proj.in_features
                emb = torch.randn(2, 3, width) if module.temporal else torch.randn(2, width)
            torch.testing.assert_close(module(h, emb), module.skip(h), rtol=0, atol=0)
            counts["res"] += 1
        elif isinstance(module, AttentionBlock):
            h = torch.randn(2, module.norm.num_channels, 4, 4)
            torch.testing.assert_close(module(h), h, rtol=0, atol=0)
            counts["attention"] += 1
        elif isinstance(module, SpatioTemporalTransformer):
            assert torch.count_nonzero(module.proj_out.weight) == 0
            counts["transformer"] += 1
    assert min(counts.values()) > 0, counts
    if initialized:
        frames = torch.randn(2, 3, 5, 4, 4)  # (B, C, F, H, W)
        conv = model.vae.decoder.temporal_conv_out
        torch.testing.assert_close(conv(frames), frames, rtol=0, atol=0)
    cfg = model.config
    out = model.unet(
        torch.randn(2, cfg.num_frames, cfg.unet.in_channels, 4, 4),
        torch.ones(2),
        torch.randn(2, 1, cfg.unet.context_dim),
        torch.randn(2, cfg.unet.vector_dim),
    )
    assert out.shape == (2, cfg.num_frames, cfg.unet.out_channels, 4, 4)
    assert torch.count_nonzero(out) == 0


def init_for_training_as_documented(module: nn.Module) -> nn.Module:
    """`init_for_training`'s rule written out here, with the zeroed layers named by their types:
    every conv and linear, in module order, draws normal(0, 1/sqrt(fan_in)) weights from the
    global generator and gets zero biases; then the last layer of every residual branch (res block
    conv2, VAE attention output, transformer proj_out) and the UNet's conv_out are zero, the
    video decoder's temporal output conv is the identity over frames, and the posterior's
    log-variance bias is INITIAL_LOGVAR."""
    from svd_core.nn import ResBlock
    from svd_core.unet import SpatioTemporalTransformer
    from svd_core.vae import AttentionBlock

    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Conv2d | nn.Conv3d | nn.Linear):
                layer.weight.normal_(0.0, 1.0 / math.sqrt(layer.weight[0].numel()))
                if layer.bias is not None:
                    layer.bias.zero_()
        zeroed = []
        for layer in module.modules():
            if isinstance(layer, ResBlock):
                zeroed.append(layer.conv2)
            elif isinstance(layer, AttentionBlock):
                zeroed.append(layer.attn.to_out)
            elif isinstance(layer, SpatioTemporalTransformer):
                zeroed.append(layer.proj_out)
            elif isinstance(layer, UNet):
                zeroed.append(layer.conv_out)
            elif isinstance(layer, VAE):
                layer.quant_conv.bias[layer.cfg.latent_channels :] = train.INITIAL_LOGVAR
                weight = layer.decoder.temporal_conv_out.weight  # (C, C, k, 1, 1)
                weight.zero_()
                weight[:, :, weight.shape[2] // 2, 0, 0] = torch.eye(weight.shape[0])
        for layer in zeroed:
            layer.weight.zero_()
    return module


@pytest.mark.parametrize("network", ["vae", "unet"])
def test_init_for_training_is_its_documented_rule_bit_for_bit(network):
    """The zero-init lives in the constructors (svd_core.nn.zero_module), not in a switch over
    layer types; the result is the rule's, bit for bit, with the same draws from the generator."""
    cfg = SVDConfig.tiny_demo()

    def build() -> nn.Module:
        return VAE(cfg.vae) if network == "vae" else UNet(cfg.unet)

    torch.manual_seed(0)
    got = train.init_for_training(build()).state_dict()
    rng_after = torch.get_rng_state()
    torch.manual_seed(0)
    expected = init_for_training_as_documented(build()).state_dict()
    assert torch.equal(torch.get_rng_state(), rng_after)  # the same number of draws
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    weights = [tensor for tensor in expected.values() if tensor.ndim >= 2]
    zero = sum(not tensor.any() for tensor in weights)
    assert 0 < zero < len(weights) / 2, (zero, len(weights))  # some layers start at zero, not most


def test_vae_loss_gives_each_clip_of_a_rank_the_noise_of_the_global_batch():
    """Under torchrun each rank passes its clips and `part` = (offset, global batch size): every
    clip is reconstructed from the posterior sample it gets in the whole batch, at any world size."""
    cfg = small_config()
    vae = VAE(cfg.vae)
    randomize(vae, seed=1, mix_factor_std=0.5)
    frames = clip_frames(4, cfg)
    num_frames = frames.shape[1]
    tc = train.VAETrainConfig()
    latents = []  # the latents each vae_loss decodes, (B*F, 4, h, w)
    vae.decoder.register_forward_pre_hook(lambda module, inputs: latents.append(inputs[0]))
    slices = [(0, 2), (2, 2), (3, 1)]  # two ranks of 2 clips; a rank with only the last clip
    with torch.no_grad():
        whole = vae.encode_posterior(frames.flatten(0, 1)).sample(train.step_generator(0, 9))
        train.vae_loss(vae, frames, tc, train.step_generator(0, 9))
        for offset, count in slices:
            clips = frames[offset : offset + count]
            train.vae_loss(vae, clips, tc, train.step_generator(0, 9), (offset, 4))
        train.vae_loss(vae, frames[2:], tc, train.step_generator(0, 9))  # drawn for 2 clips
    torch.testing.assert_close(latents[0], whole, rtol=0, atol=0)
    for (offset, count), latent in zip(slices, latents[1:-1], strict=True):
        rows = slice(offset * num_frames, (offset + count) * num_frames)
        # (the encoder's round-off differs with the batch size)
        torch.testing.assert_close(latent, whole[rows], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(latents[-1], whole[2 * num_frames :], rtol=1e-3, atol=1e-3)


def test_init_for_training_weights_are_variance_preserving():
    torch.manual_seed(0)
    vae = train.init_for_training(VAE(small_config().vae))
    conv = vae.encoder.conv_in
    fan_in = conv.weight[0].numel()
    assert (
        abs(conv.weight.std().item() * fan_in**0.5 - 1) < 0.25
    )  # std 1/sqrt(fan_in), 27 x C draws
    assert torch.count_nonzero(conv.bias) == 0


def test_random_window_takes_consecutive_frames_of_each_clip():
    frames = torch.arange(3 * 6, dtype=torch.float32).reshape(3, 6, 1, 1, 1).expand(3, 6, 1, 2, 2)
    window = train.random_window(frames, 3, torch.Generator().manual_seed(0))
    assert window.shape == (3, 3, 1, 2, 2)
    for clip, got in zip(frames, window, strict=True):
        start = int(got[0, 0, 0, 0]) % 6
        torch.testing.assert_close(got, clip[start : start + 3])
    assert train.random_window(frames, 0, torch.Generator()) is frames
    with pytest.raises(train.TrainingError, match="clip_frames 7 is more than the clips' 6"):
        train.random_window(frames, 7, torch.Generator())


def test_encode_conditioning_records_gradients_only_into_the_image_encoder_when_asked():
    from svd_core.conditioning import encode_conditioning

    model = SVDModel(small_config())
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    noise = torch.randn_like(image)
    plain = encode_conditioning(model, image, noise, 6, 127, 0.02)
    assert not plain.context.requires_grad and not plain.image_latent.requires_grad
    trained = encode_conditioning(model, image, noise, 6, 127, 0.02, image_encoder_grad=True)
    assert trained.context.requires_grad and not trained.image_latent.requires_grad
    torch.testing.assert_close(trained.context.detach(), plain.context, rtol=0, atol=0)
    torch.testing.assert_close(trained.image_latent, plain.image_latent, rtol=0, atol=0)
