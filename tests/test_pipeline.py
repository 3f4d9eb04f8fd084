"""SVDPipeline end to end: live parity with diffusers' StableVideoDiffusionPipeline, seeds and the
random draw order, batches, guidance batching, chunked decoding, image inputs, errors, video files
and the command line."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from helpers import random_model, set_res_block_eps
from PIL import Image

import svd_core.cli
import svd_core.io
from svd_core.io import fit_image, load_image, save_video
from svd_core.loading import save
from svd_core.pipeline import SVDPipeline, Video

# Frames in [0, 1], float32, max |ours - diffusers| after a whole run (CLIP, VAE encode, 4 guided
# UNet steps, temporal decode), diffusers' res-block GroupNorm eps set to the official 1e-5: float32
# round-off through the random networks (measured about 7e-6).
PARITY_ATOL = 5e-5
# numerics="official" (float32 schedule, kornia-style CLIP resize, guidance on the denoised) against
# diffusers: differs only by round-off-sized amounts (measured about 1e-5).
OFFICIAL_VS_DIFFUSERS_ATOL = 1e-4
# The same videos computed in another batch composition (a batch of 2 against single runs, the
# guidance branches batched or one after the other): float32 round-off only, amplified by the steep
# 2-step schedule (measured up to 5e-5 in float32; exactly 0 with the networks in float64).
BATCH_ATOL = 1e-4
# Decoding the returned latents again with the same chunking: the same operations.
ROUND_OFF_ATOL = 1e-6

SIZE = 64
FRAMES = 5
STEPS = 2


pytestmark = pytest.mark.usefixtures("one_thread")


def test_image(height: int = SIZE, width: int = SIZE, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    ramp = np.stack([xx * 4 % 200, yy * 4 % 200, (xx + yy) * 2 % 200], -1)
    return Image.fromarray((ramp + rng.integers(0, 50, (height, width, 3))).astype(np.uint8))


test_image.__test__ = False  # a helper, not a test


@pytest.fixture(scope="module")
def model():
    return random_model()


@pytest.fixture(scope="module")
def pipe(model):
    return SVDPipeline(model)


@pytest.fixture(scope="module")
def image():
    return test_image()


def run(pipe, image, **kwargs) -> Video:
    options = dict(num_frames=FRAMES, num_steps=STEPS, seed=0, progress=False)
    return pipe(image, **{**options, **kwargs})


# ---- parity with diffusers -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def diffusers_pipe(model, tmp_path_factory):
    diffusers = pytest.importorskip("diffusers")
    folder = save(model, tmp_path_factory.mktemp("svd") / "tiny", layout="diffusers")
    reference = diffusers.StableVideoDiffusionPipeline.from_pretrained(folder)
    reference.set_progress_bar_config(disable=True)
    return reference


def test_matches_diffusers_pipeline_end_to_end(pipe, diffusers_pipe, image, monkeypatch):
    """Same weights, same PIL image (already 64x64: no resize on either side), same seed: diffusers
    draws the conditioning noise, then the latents, from the CPU generator, in our order."""
    import diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion as module

    # diffusers resizes the CLIP input to a fixed 224x224; the tiny encoder takes 56x56.
    size = pipe.config.image_encoder.image_size
    resize = module._resize_with_antialiasing
    monkeypatch.setattr(
        module, "_resize_with_antialiasing", lambda x, _, **kw: resize(x, (size, size), **kw)
    )
    options = dict(num_frames=FRAMES, fps=7, motion_bucket_id=127, decode_chunk_size=FRAMES)
    options.update(height=SIZE, width=SIZE)
    steps, seed = 4, 3

    def reference() -> torch.Tensor:
        return diffusers_pipe(
            image,
            num_inference_steps=steps,
            min_guidance_scale=1.0,
            max_guidance_scale=3.0,
            noise_aug_strength=0.02,
            generator=torch.Generator().manual_seed(seed),
            output_type="pt",
            **options,
        ).frames[0]

    stock = reference()  # diffusers as shipped: GroupNorm eps 1e-6 in some res blocks
    set_res_block_eps(diffusers_pipe.unet, 1e-5)
    try:
        expected = reference()
    finally:
        set_res_block_eps(diffusers_pipe.unet, 1e-6)
    assert expected.shape == (FRAMES, 3, SIZE, SIZE)
    assert (expected[1:] - expected[:1]).abs().max() > 0.1, "frames too alike to test anything"

    common = dict(num_steps=steps, min_guidance=1.0, max_guidance=3.0, cond_aug=0.02, seed=seed)
    ours = pipe(image, numerics="diffusers", progress=False, **common, **options)
    official = pipe(image, numerics="official", progress=False, **common, **options)
    err = (ours.float_frames - expected).abs().max().item()
    stock_err = (ours.float_frames - stock).abs().max().item()
    official_err = (official.float_frames - expected).abs().max().item()
    print(
        f"\nframes max abs err vs diffusers: numerics='diffusers' (eps 1e-5) {err:.3e}; "
        f"stock diffusers (eps 1e-6) {stock_err:.3e}; numerics='official' {official_err:.3e}"
    )
    assert err < PARITY_ATOL
    assert official_err < OFFICIAL_VS_DIFFUSERS_ATOL
    assert stock_err > err  # the eps patch is what closes the gap
    # diffusers rounds to uint8; so does numerics="diffusers" (the official script truncates).
    expected_uint8 = (expected.permute(0, 2, 3, 1) * 255).round().numpy().astype(np.uint8)
    levels = np.abs(ours.frames.astype(int) - expected_uint8.astype(int))
    assert levels.max() <= 1 and (levels > 0).mean() < 1e-3


def test_diffusers_latents_argument_equals_our_noise_argument(pipe, diffusers_pipe, monkeypatch):
    """diffusers' `latents=` is unit-variance noise too: its prepare_latents multiplies what it is
    given by init_noise_sigma = sqrt(1 + sigma_max^2), as we do with `noise=`."""
    import diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion as module

    size = pipe.config.image_encoder.image_size
    resize = module._resize_with_antialiasing
    monkeypatch.setattr(
        module, "_resize_with_antialiasing", lambda x, _, **kw: resize(x, (size, size), **kw)
    )
    image = test_image(seed=5)
    noise = torch.randn(1, 3, 4, 8, 8, generator=torch.Generator().manual_seed(11))
    set_res_block_eps(diffusers_pipe.unet, 1e-5)
    try:
        expected = diffusers_pipe(
            image,
            num_frames=3,
            num_inference_steps=4,  # 2 steps (700 -> 0.002) amplify round-off to ~6e-5
            decode_chunk_size=3,
            height=SIZE,
            width=SIZE,
            latents=noise,
            generator=torch.Generator().manual_seed(4),  # the conditioning noise only
            output_type="pt",
        ).frames[0]
    finally:
        set_res_block_eps(diffusers_pipe.unet, 1e-6)
    options = dict(num_frames=3, num_steps=4, decode_chunk_size=3, max_guidance=3.0, seed=4)
    ours = pipe(image, noise=noise, numerics="diffusers", progress=False, **options)
    seeded = pipe(image, numerics="diffusers", progress=False, **options)
    assert (seeded.float_frames - ours.float_frames).abs().max() > 1e-3  # noise= was used
    err = (ours.float_frames - expected).abs().max().item()
    assert err < PARITY_ATOL, err


# ---- seeds, draw order, batches ------------------------------------------------------------------


def test_same_seed_same_video_different_seed_different_video(pipe, image):
    first, again, other = (
        run(pipe, image, seed=7),
        run(pipe, image, seed=7),
        run(pipe, image, seed=8),
    )
    assert torch.equal(first.float_frames, again.float_frames)
    assert np.array_equal(first.frames, again.frames)
    assert (first.float_frames - other.float_frames).abs().max() > 1e-2
    assert first.frames.shape == (FRAMES, SIZE, SIZE, 3) and first.frames.dtype == np.uint8
    assert first.float_frames.shape == (FRAMES, 3, SIZE, SIZE)
    assert first.latents.shape == (FRAMES, 4, SIZE // 8, SIZE // 8)


def test_random_draw_order_conditioning_noise_then_latent_noise(pipe, image, monkeypatch):
    import svd_core.pipeline as pipeline_module

    seen = []
    encode = pipeline_module.encode_conditioning

    def spy(model, images, cond_noise, **kwargs):
        seen.append(cond_noise.clone())
        return encode(model, images, cond_noise, **kwargs)

    monkeypatch.setattr(pipeline_module, "encode_conditioning", spy)
    generator = torch.Generator().manual_seed(21)
    first = torch.randn(1, 3, SIZE, SIZE, generator=generator)
    second = torch.randn(FRAMES, 4, SIZE // 8, SIZE // 8, generator=generator)
    seeded = run(pipe, image, seed=21)
    given = run(pipe, image, seed=21, noise=second[None])
    assert torch.equal(seen[0], first) and torch.equal(seen[1], first)
    assert torch.equal(seeded.float_frames, given.float_frames)


def test_batch_equals_single_runs_with_consecutive_seeds(pipe):
    images = [test_image(seed=1), test_image(seed=2)]
    batch = run(pipe, images, seed=10)
    assert isinstance(batch, list) and len(batch) == 2
    for index, video in enumerate(batch):
        single = run(pipe, images[index], seed=10 + index)
        assert (video.float_frames - single.float_frames).abs().max() < BATCH_ATOL
    # a list of seeds, one per image, and a 4-D tensor batch
    tensor_batch = torch.cat([load_image(item) for item in images])
    listed = run(pipe, tensor_batch, seed=[10, 11])
    for a, b in zip(batch, listed, strict=True):
        assert (a.float_frames - b.float_frames).abs().max() < BATCH_ATOL
    with pytest.raises(ValueError, match="list of 2 ints"):
        run(pipe, images, seed=[1])


def test_sequential_guidance_branches_equal_batched(pipe, image):
    batched = run(pipe, image, batch_guidance=True)
    sequential = run(pipe, image, batch_guidance=False)
    assert (batched.float_frames - sequential.float_frames).abs().max() < BATCH_ATOL


def test_chunked_decoding_is_the_vaes_chunked_decode_of_the_latents(pipe, model, image):
    video = run(pipe, image, decode_chunk_size=2)
    with torch.no_grad():
        decoded = model.vae.decode(
            video.latents[None] / model.config.vae.scaling_factor, chunk_size=2
        )
    expected = ((decoded[0] + 1) / 2).clamp(0, 1)
    assert (video.float_frames - expected).abs().max() < ROUND_OFF_ATOL
    whole = run(pipe, image, decode_chunk_size=FRAMES)
    assert torch.equal(whole.latents, video.latents)


# bfloat16 keeps about 3 significant digits, and these random weights amplify round-off; the mean
# error says the half-precision run is the same video (measured: 0.004; another seed: 0.066).
BF16_MEAN_ATOL = 0.01


def test_half_precision_policy_keeps_the_vae_in_float32_and_stays_close(image):
    reference = run(SVDPipeline(random_model()), image)
    half = SVDPipeline(random_model(), dtype=torch.bfloat16)
    assert next(half.model.unet.parameters()).dtype == torch.bfloat16
    assert next(half.model.image_encoder.parameters()).dtype == torch.bfloat16
    assert next(half.model.vae.parameters()).dtype == torch.float32
    video = run(half, image)
    assert torch.isfinite(video.float_frames).all()
    difference = (video.float_frames - reference.float_frames).abs()
    print(
        f"bfloat16 vs float32 frames: mean abs {difference.mean():.3e}, max {difference.max():.3e}"
    )
    assert difference.mean().item() < BF16_MEAN_ATOL
    unrelated = run(SVDPipeline(random_model()), image, seed=1).float_frames
    assert (unrelated - reference.float_frames).abs().mean() > 5 * difference.mean()
    with pytest.raises(ValueError, match="dtype must be"):
        SVDPipeline(random_model(), dtype=torch.int8)


@pytest.mark.parametrize("sampler", ["heun", "dpmpp_2m"])
def test_other_samplers_run_end_to_end(pipe, image, sampler):
    euler = run(pipe, image)
    video = run(pipe, image, sampler=sampler)
    assert torch.isfinite(video.float_frames).all() and torch.isfinite(video.latents).all()
    assert (video.float_frames - euler.float_frames).abs().max() > 1e-4


def test_callback_sees_every_step(pipe, image):
    steps = []
    run(pipe, image, num_steps=3, callback=lambda info: steps.append(info["step"]))
    assert steps == [0, 1, 2]


# ---- image inputs ---------------------------------------------------------------------------------


def test_image_input_kinds(tmp_path, image):
    expected = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1
    path = tmp_path / "image.png"
    image.save(path)
    assert torch.equal(load_image(path), expected)
    assert torch.equal(load_image(str(path)), expected)
    assert torch.equal(load_image(image), expected)
    assert torch.equal(load_image(np.asarray(image)), expected)
    assert torch.equal(load_image(expected[0]), expected)
    palette = image.convert("P")
    assert torch.equal(load_image(palette), load_image(palette.convert("RGB")))
    grey = load_image(image.convert("L"))
    assert grey.shape == (1, 3, SIZE, SIZE) and torch.equal(grey[:, 0], grey[:, 2])
    rgba = image.convert("RGBA")
    rgba.putalpha(0)  # fully transparent: composited on white
    assert torch.equal(load_image(rgba), torch.ones(1, 3, SIZE, SIZE))


def test_pipeline_accepts_path_numpy_and_tensor_alike(pipe, image, tmp_path):
    path = tmp_path / "image.png"
    image.save(path)
    options = dict(num_frames=2, num_steps=1)
    reference = run(pipe, image, **options).float_frames
    for kind in (path, np.asarray(image), load_image(image)[0]):
        assert torch.equal(run(pipe, kind, **options).float_frames, reference)


def test_non_square_images_crop_squash_or_refuse(pipe):
    wide = load_image(test_image(height=64, width=128))
    cropped = fit_image(wide, SIZE, SIZE, "crop")
    assert (cropped - wide[:, :, :, 32:96]).abs().max() < 1e-5  # center columns, no rescale
    squashed = fit_image(wide, SIZE, SIZE, "squash")
    assert squashed.shape == cropped.shape and (squashed - cropped).abs().max() > 0.1
    assert squashed.min() >= -1 and squashed.max() <= 1
    with pytest.raises(ValueError, match=r"64x128.*64x64"):
        run(pipe, test_image(height=64, width=128), resize="none")
    with pytest.raises(ValueError, match="resize must be one of"):
        run(pipe, test_image(), resize="stretch")
    for name in ("height", "width"):
        with pytest.raises(ValueError, match=f"{name} must be a positive multiple of 32 .*got 100"):
            run(pipe, test_image(), **{name: 100})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_frames": 0}, "num_frames must be a positive integer, got 0"),
        ({"num_steps": 0}, "num_steps must be a positive integer, got 0"),
        ({"decode_chunk_size": 0}, "decode_chunk_size must be a positive integer"),
        ({"sampler": "ddim"}, "sampler must be one of .*'ddim'"),
        ({"guidance": "cosine"}, "guidance must be one of .*'cosine'"),
        ({"numerics": "fast"}, "numerics must be one of"),
        ({"cond_aug": -0.1}, "cond_aug must be >= 0"),
        ({"fps": float("nan")}, "fps must be finite"),
        ({"fps": 0}, "fps must be positive"),
        ({"motion_bucket_id": "high"}, "motion_bucket_id must be a number"),
        ({"noise": torch.zeros(1, FRAMES, 4, 4, 4)}, r"noise must have shape \(1, 5, 4, 8, 8\)"),
    ],
)
def test_bad_arguments_raise_clear_errors(pipe, image, options, message):
    with pytest.raises(ValueError, match=message):
        run(pipe, image, **options)


def test_bad_images_raise_clear_errors(pipe, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        run(pipe, tmp_path / "missing.png")
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    with pytest.raises(ValueError, match="cannot read .* as an image"):
        run(pipe, not_an_image)
    with pytest.raises(ValueError, match=r"must be in \[-1, 1\], got values in \[0, 255\]"):
        run(pipe, torch.full((3, SIZE, SIZE), 255.0).index_fill_(1, torch.tensor([0]), 0.0))
    with pytest.raises(ValueError, match="NaN"):
        run(pipe, torch.full((3, SIZE, SIZE), float("nan")))
    with pytest.raises(ValueError, match=r"float image arrays must be in \[0, 1\]"):
        run(pipe, np.full((SIZE, SIZE, 3), 2.0, dtype=np.float32))
    with pytest.raises(TypeError, match="image must be a path"):
        run(pipe, 42)
    with pytest.raises(ValueError, match="no images"):
        run(pipe, [])


# ---- video files ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)


def _only(folder, name) -> None:
    assert sorted(os.listdir(folder)) == [name], os.listdir(folder)


def test_video_formats_are_written_and_read_back(frames, tmp_path):
    import imageio.v2 as imageio

    video = Video(frames, 7.0, torch.zeros(4, 3, SIZE, SIZE), torch.zeros(4, 4, 8, 8))
    for name in ("clip.mp4", "clip.gif"):
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        assert video.save(folder / name) == folder / name
        _only(folder, name)
        assert len(imageio.mimread(folder / name)) == 4
    gif = np.asarray(imageio.mimread(tmp_path / "clip_gif" / "clip.gif"))[..., :3]
    assert gif.shape == (4, SIZE, SIZE, 3)
    folder = tmp_path / "webp"
    folder.mkdir()
    video.save(folder / "clip.webp")
    _only(folder, "clip.webp")
    with Image.open(folder / "clip.webp") as webp:
        assert webp.n_frames == 4
        webp.seek(2)
        assert np.array_equal(np.asarray(webp.convert("RGB")), frames[2])  # lossless
    folder = tmp_path / "pngs"
    folder.mkdir()
    video.save(folder / "frames")
    _only(folder, "frames")
    names = sorted(os.listdir(folder / "frames"))
    assert names == ["0000.png", "0001.png", "0002.png", "0003.png"]
    for index, name in enumerate(names):
        assert np.array_equal(np.asarray(Image.open(folder / "frames" / name)), frames[index])
    video.save(folder / "frames")  # overwriting a frames folder works
    _only(folder, "frames")


def test_unknown_suffix_and_missing_folder_are_errors(frames, tmp_path):
    with pytest.raises(ValueError, match=r"clip.avi.*\.mp4, \.gif, \.webp"):
        save_video(frames, tmp_path / "clip.avi", 7)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_video(frames, tmp_path / "nowhere" / "clip.gif", 7)
    with pytest.raises(ValueError, match="uint8"):
        save_video(frames.astype(np.float32), tmp_path / "clip.gif", 7)
    assert os.listdir(tmp_path) == []


def test_failed_writes_leave_no_partial_or_temporary_files(frames, tmp_path, monkeypatch):
    def broken_mp4(frames, target, fps, comment=None):
        with open(target, "wb") as handle:
            handle.write(b"\x00" * 100)
        raise OSError("disk full")

    monkeypatch.setattr(svd_core.io, "_write_mp4", broken_mp4)
    with pytest.raises(OSError, match="disk full"):
        save_video(frames, tmp_path / "clip.mp4", 7)
    assert os.listdir(tmp_path) == []

    calls = []
    real_save = Image.Image.save

    def broken_save(self, target, *args, **kwargs):
        calls.append(target)
        if len(calls) > 1:  # the second frame / second file fails mid-write
            raise OSError("interrupted")
        return real_save(self, target, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="interrupted"):
        save_video(frames, tmp_path / "frames", 7)
    assert os.listdir(tmp_path) == []
    calls.clear()
    calls.append("first call already made")
    with pytest.raises(OSError, match="interrupted"):
        save_video(frames, tmp_path / "clip.gif", 7)
    assert os.listdir(tmp_path) == []


# ---- command line ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_files(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    checkpoint = save(model, folder / "tiny.safetensors", layout="official")
    config = folder / "tiny.json"
    model.config.to_json(config)
    image = folder / "image.png"
    test_image().save(image)
    return folder, checkpoint, config, image


def _generate_args(image, output, checkpoint, config):
    args = ["generate", str(image), "-o", str(output), "--model", str(checkpoint)]
    args += ["--frames", "3", "--steps", "2", "--seed", "0", "--quiet"]
    args += ["--height", "64", "--width", "64"]
    return args + ([] if config is None else ["--config", str(config)])


def test_cli_generate_writes_the_video(cli_files, tmp_path, capsys):
    import imageio.v2 as imageio

    _, checkpoint, config, image = cli_files
    output = tmp_path / "out.mp4"
    assert svd_core.cli.main(_generate_args(image, output, checkpoint, config)) == 0
    assert "wrote 3 frames" in capsys.readouterr().out
    assert len(imageio.mimread(output)) == 3
    assert os.listdir(tmp_path) == ["out.mp4"]


def test_cli_reads_the_config_svd_core_saved_in_the_file(cli_files, tmp_path):
    # A file without that metadata and of no preset size needs --config (tests/test_loading.py).
    _, checkpoint, _, image = cli_files
    assert svd_core.cli.main(_generate_args(image, tmp_path / "o.gif", checkpoint, None)) == 0
    assert os.listdir(tmp_path) == ["o.gif"]


def test_cli_errors_exit_2_with_one_line(cli_files, tmp_path, capsys):
    folder, checkpoint, config, image = cli_files
    bad_checkpoint = tmp_path / "x.safetensors"
    bad_checkpoint.write_text("not a checkpoint")
    cases = [
        (
            _generate_args(tmp_path / "missing.png", tmp_path / "o.mp4", checkpoint, config),
            "missing",
        ),
        (_generate_args(image, tmp_path / "o.mp4", tmp_path / "none.safetensors", config), "none"),
        (_generate_args(image, tmp_path / "o.mp4", bad_checkpoint, config), "x.safetensors"),
        (_generate_args(image, tmp_path / "o.avi", checkpoint, config), "o.avi"),
        (_generate_args(image, tmp_path / "o.mp4", checkpoint, folder / "nope.json"), "nope.json"),
    ]
    for args, named in cases:
        assert svd_core.cli.main(args) == 2, args
        error = capsys.readouterr().err
        assert error.startswith("svd-core: error:") and error.count("\n") == 1, error
        assert named in error, error
    assert sorted(os.listdir(tmp_path)) == ["x.safetensors"]


def test_cli_info_prints_layout_and_parameter_counts(cli_files, model, capsys):
    _, checkpoint, config, _ = cli_files
    assert svd_core.cli.main(["info", str(checkpoint), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "layout:  official" in out
    counts = model.parameter_counts()
    for name in ("unet", "vae", "image_encoder", "total"):
        assert f"{counts[name]:,}" in out
