"""The VAE: diffusers parity on random weights, full size on meta, key maps, chunking, errors."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import diffusers  # noqa: E402
import pytest
import torch

from svd_core import SVDConfig, VAEConfig
from svd_core.loading.keymap import KeyMapError
from svd_core.loading.vae_maps import (
    diffusers_vae_config,
    diffusers_vae_map,
    official_vae_map,
    vae_config_from_diffusers,
)
from svd_core.nn import ResBlock
from svd_core.vae import VAE

# Relative error max |ours - theirs| / max |theirs| of our float32 network on random weights,
# against diffusers run in float64 (the truth up to float32 round-off): about 1e-5 for a network.
RTOL_VS_FLOAT64 = 1e-5
# Against diffusers in float32 the error also holds diffusers' own round-off, which measures up to
# 2.1e-5 (its float32 vs its float64, chunk 1) on these weights; DESIGN.md's 1e-4 for a whole
# network.
RTOL_VS_FLOAT32 = 1e-4

# The key list made from the official model definition, in the shared/ folder beside the repository.
OFFICIAL_KEYS = Path(__file__).resolve().parents[2] / "shared" / "official_keys.json"
COND_AE = "conditioner.embedders.3.encoder."

# The tiny preset (2 res blocks per level): diffusers' temporal decoder builds its mid block with
# `layers_per_block` res blocks, so only 2 gives the official res, attention, res.
TINY = SVDConfig.tiny().vae
TINY_IMAGE = dataclasses.replace(TINY, temporal_decoder=False)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These networks are tiny: one thread is as fast, and does not spin on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random, including zero-initialised convs, norms and blend logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * p[0].numel() ** -0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def _diffusers_model(cfg: VAEConfig, seed: int = 0) -> torch.nn.Module:
    kwargs = diffusers_vae_config(cfg)
    cls = getattr(diffusers, kwargs.pop("_class_name"))
    model = cls(**kwargs).eval()
    _randomize(model, seed)
    return model


def _ours_from(reference: torch.nn.Module, cfg: VAEConfig) -> VAE:
    ours = VAE(cfg).eval()
    assert diffusers_vae_map(cfg).load_into(ours, reference.state_dict()) == {}
    return ours


def _relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def _reference_decode(reference, z: torch.Tensor, chunk: int, temporal: bool) -> torch.Tensor:
    """diffusers' decode, chunked as ours: `chunk` frames of every video at a time."""
    batch, num_frames = z.shape[:2]
    pieces = []
    for start in range(0, num_frames, chunk):
        part = z[:, start : start + chunk]
        frames = part.shape[1]
        kwargs = {"num_frames": frames} if temporal else {}
        out = reference.decode(part.flatten(0, 1), **kwargs).sample
        pieces.append(out.unflatten(0, (batch, frames)))
    return torch.cat(pieces, dim=1)


@pytest.fixture(scope="module")
def video_models():
    """(diffusers float32, the same in float64, ours float32), all with the same random weights."""
    reference = _diffusers_model(TINY, seed=0)
    return reference, copy.deepcopy(reference).double(), _ours_from(reference, TINY)


def _check_parity(
    what: str, ours: torch.Tensor, theirs32: torch.Tensor, theirs64: torch.Tensor
) -> None:
    vs64 = _relative_error(ours.double(), theirs64)
    vs32 = _relative_error(ours, theirs32)
    own = _relative_error(theirs32.double(), theirs64)
    print(
        f"\n{what}: ours vs diffusers-f64 {vs64:.2e} (tol {RTOL_VS_FLOAT64}), "
        f"vs diffusers-f32 {vs32:.2e} (tol {RTOL_VS_FLOAT32}); diffusers-f32 vs f64 {own:.2e}"
    )
    assert vs64 < RTOL_VS_FLOAT64
    assert vs32 < RTOL_VS_FLOAT32


# ---- parity --------------------------------------------------------------------------------------


def test_encode_matches_diffusers_posterior_mode(video_models):
    reference, reference64, ours = video_models
    image = torch.rand(2, 3, 24, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        theirs = reference.encode(image).latent_dist
        theirs64 = reference64.encode(image.double()).latent_dist
        posterior = ours.encode_posterior(image)
        mode = ours.encode(image)
    assert mode.shape == (2, 4, 3, 4)
    _check_parity("encode (mode)", mode, theirs.mode(), theirs64.mode())
    _check_parity("encode (logvar)", posterior.logvar, theirs.logvar, theirs64.logvar)
    assert torch.equal(posterior.mode(), mode)


@pytest.mark.parametrize("num_frames", [3, 5])
def test_video_decode_matches_diffusers_at_equal_chunking(video_models, num_frames):
    reference, reference64, ours = video_models
    z = torch.randn(2, num_frames, 4, 3, 4, generator=torch.Generator().manual_seed(num_frames))
    for chunk in (1, 2, None):
        with torch.no_grad():
            mine = ours.decode(z, chunk_size=chunk)
            theirs = _reference_decode(reference, z, chunk or num_frames, temporal=True)
            theirs64 = _reference_decode(
                reference64, z.double(), chunk or num_frames, temporal=True
            )
        assert mine.shape == (2, num_frames, 3, 24, 32)
        _check_parity(f"decode F={num_frames} chunk={chunk}", mine, theirs, theirs64)


def test_one_video_chunked_as_the_pipeline_flattens_frames(video_models):
    """With B = 1, cutting the flattened frame axis (diffusers pipeline, sgm) = our chunking."""
    reference, _, ours = video_models
    z = torch.randn(1, 5, 4, 2, 3, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        flat = z.flatten(0, 1)
        pieces = [
            reference.decode(flat[i : i + 2], num_frames=len(flat[i : i + 2])).sample
            for i in (0, 2, 4)
        ]
        theirs = torch.cat(pieces).unflatten(0, (1, 5))
        mine = ours.decode(z, chunk_size=2)
    assert _relative_error(mine, theirs) < RTOL_VS_FLOAT32


def test_image_decoder_matches_diffusers_autoencoder_kl():
    reference = _diffusers_model(TINY_IMAGE, seed=3)
    reference64 = copy.deepcopy(reference).double()
    ours = _ours_from(reference, TINY_IMAGE)
    assert ours.post_quant_conv is not None and ours.decoder.temporal_conv_out is None
    image = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(4)) * 2 - 1
    z = torch.randn(2, 3, 4, 3, 3, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        _check_parity(
            "image-decoder VAE encode",
            ours.encode(image),
            reference.encode(image).latent_dist.mode(),
            reference64.encode(image.double()).latent_dist.mode(),
        )
        theirs = _reference_decode(reference, z, 3, temporal=False)
        theirs64 = _reference_decode(reference64, z.double(), 3, temporal=False)
        for chunk in (1, 2, None):
            mine = ours.decode(z, chunk_size=chunk)
            _check_parity(f"image decoder decode chunk={chunk}", mine, theirs, theirs64)


# ---- full size on the meta device ----------------------------------------------------------------


def _official_shapes() -> dict[str, tuple[int, ...]]:
    tensors = json.loads(OFFICIAL_KEYS.read_text())["tensors"]
    vae_prefixes = ("first_stage_model.", "conditioner.embedders.3.")
    return {k: tuple(v) for k, v in tensors.items() if k.startswith(vae_prefixes)}


def _meta_vae(cfg: VAEConfig) -> VAE:
    with torch.device("meta"):
        return VAE(cfg)


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _numel(shapes: dict[str, tuple[int, ...]], prefix: str) -> int:
    total = 0
    for key, shape in shapes.items():
        if key.startswith(prefix):
            total += torch.Size(shape).numel()
    return total


def test_full_size_matches_official_keys_and_counts():
    cfg = SVDConfig.svd().vae
    vae = _meta_vae(cfg)
    official = _official_shapes()
    ignored = official_vae_map(cfg).check(official, _shapes(vae))
    unused = ("first_stage_model.encoder.", COND_AE + "decoder.", COND_AE + "post_quant_conv.")
    assert set(ignored) == {k for k in official if k.startswith(unused)}
    print(f"\nofficial VAE keys: {len(official) - len(ignored)} loaded, {len(ignored)} ignored")
    encoder_params = _count(vae.encoder) + _count(vae.quant_conv)
    decoder_params = _count(vae.decoder)
    print(f"\nfull size: encoder + quant_conv {encoder_params:,}, decoder {decoder_params:,}")
    assert encoder_params == _numel(official, COND_AE + "encoder.") + _numel(
        official, COND_AE + "quant_conv."
    )
    assert decoder_params == _numel(official, "first_stage_model.decoder.")
    assert (encoder_params, decoder_params) == (34_163_664, 63_579_183)


def test_image_decoder_layout_derived_from_svd_image_decoder_yaml():
    """svd_image_decoder.yaml: first_stage_model is an sgm AutoencoderKL with the conditioning
    autoencoder's structure (encoder, decoder, quant_conv, post_quant_conv)."""
    cfg = SVDConfig.svd_image_decoder().vae
    conditioning = {
        k: v for k, v in _official_shapes().items() if k.startswith("conditioner.embedders.3.")
    }
    first_stage = {"first_stage_model." + k[len(COND_AE) :]: v for k, v in conditioning.items()}
    ignored = official_vae_map(cfg).check({**conditioning, **first_stage}, _shapes(_meta_vae(cfg)))
    assert "first_stage_model.quant_conv.weight" in ignored
    assert "first_stage_model.post_quant_conv.weight" not in ignored


def test_full_size_matches_diffusers_temporal_decoder_on_meta():
    cfg = SVDConfig.svd().vae
    kwargs = diffusers_vae_config(cfg)
    del kwargs["_class_name"]
    with torch.device("meta"):
        reference = diffusers.AutoencoderKLTemporalDecoder(**kwargs)
    vae = _meta_vae(cfg)
    assert diffusers_vae_map(cfg).check(_shapes(reference), _shapes(vae)) == {}
    assert _count(vae) == _count(reference) == 97_742_847
    assert vae_config_from_diffusers(reference.config, "AutoencoderKLTemporalDecoder") == cfg


# ---- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [TINY, TINY_IMAGE], ids=["video", "image"])
def test_state_dict_round_trips_bit_exact(cfg):
    vae = VAE(cfg)
    _randomize(vae, seed=11)
    state = vae.state_dict()
    for key_map in (official_vae_map(cfg), diffusers_vae_map(cfg)):
        theirs = key_map.to_theirs(state)
        back = key_map.to_ours(theirs.__getitem__)
        assert back.keys() == state.keys()
        assert all(torch.equal(back[k], state[k]) for k in state), key_map.layout
    reference = _diffusers_model(cfg)
    reference.load_state_dict(diffusers_vae_map(cfg).to_theirs(state), strict=True)


@pytest.mark.parametrize(
    "cfg", [TINY, TINY_IMAGE, SVDConfig.svd().vae], ids=["tiny", "image", "svd"]
)
def test_diffusers_config_round_trips(cfg):
    kwargs = diffusers_vae_config(cfg)
    assert vae_config_from_diffusers(kwargs) == cfg


# ---- chunking ------------------------------------------------------------------------------------


def test_chunk_size_of_all_frames_equals_no_chunking(video_models):
    _, _, ours = video_models
    z = torch.randn(2, 4, 4, 2, 2, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        assert torch.equal(ours.decode(z, chunk_size=4), ours.decode(z))
        assert torch.equal(ours.decode(z, chunk_size=9), ours.decode(z))


def test_temporal_layers_see_only_their_chunk(video_models):
    _, _, ours = video_models
    seen: list[tuple[int, int]] = []  # (videos, frames) of every temporal layer call

    def record(module, inputs):
        seen.append((inputs[0].shape[0], inputs[0].shape[2]))  # (B, C, F, H, W)

    temporal = [m for m in ours.modules() if isinstance(m, ResBlock) and m.temporal]
    temporal.append(ours.decoder.temporal_conv_out)
    handles = [m.register_forward_pre_hook(record) for m in temporal]
    try:
        z = torch.randn(2, 5, 4, 2, 2)
        with torch.no_grad():
            ours.decode(z, chunk_size=2)
            chunked, seen[:] = list(seen), []
            ours.decode(z)
            whole = list(seen)
    finally:
        for h in handles:
            h.remove()
    calls_per_pass = len(temporal)
    assert chunked == [(2, 2)] * calls_per_pass * 2 + [(2, 1)] * calls_per_pass
    assert whole == [(2, 5)] * calls_per_pass


# ---- bad input -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_vae():
    return VAE(SVDConfig.tiny().vae).eval()


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((3, 32, 32), "add a batch dimension"),
        ((1, 4, 32, 32), "expects 3 channels"),
        ((1, 3, 30, 32), "divisible by 8"),
    ],
)
def test_encode_rejects_bad_images(small_vae, shape, message):
    with pytest.raises(ValueError, match=message):
        small_vae.encode(torch.zeros(shape))


def test_encode_rejects_integer_images(small_vae):
    with pytest.raises(ValueError, match="floating-point"):
        small_vae.encode(torch.zeros((1, 3, 8, 8), dtype=torch.uint8))


def test_encode_warns_on_images_outside_minus_one_one(small_vae):
    with pytest.warns(UserWarning, match=r"expects images in \[-1, 1\]"):
        small_vae.encode(torch.full((1, 3, 8, 8), 255.0))


@pytest.mark.parametrize(
    ("shape", "chunk", "message"),
    [
        ((2, 4, 4, 4), None, "add a frame axis"),
        ((1, 2, 3, 4, 4), None, "expects 4 latent channels"),
        ((1, 2, 4, 4, 4), 0, "chunk_size must be"),
        ((1, 2, 4, 4, 4), 1.5, "chunk_size must be"),
    ],
)
def test_decode_rejects_bad_latents_and_chunks(small_vae, shape, chunk, message):
    with pytest.raises(ValueError, match=message):
        small_vae.decode(torch.zeros(shape), chunk_size=chunk)


def test_diffusers_conversions_reject_unsupported_configs():
    with pytest.raises(ValueError, match="num_res_blocks=1"):
        diffusers_vae_config(dataclasses.replace(SVDConfig.tiny().vae, num_res_blocks=1))
    good = diffusers_vae_config(TINY)
    with pytest.raises(ValueError, match="layers_per_block=1"):
        vae_config_from_diffusers({**good, "layers_per_block": 1})
    with pytest.raises(ValueError, match="not supported"):
        vae_config_from_diffusers({**good, "_class_name": "AutoencoderTiny"})
    with pytest.raises(ValueError, match="does not support"):
        vae_config_from_diffusers({**good, "some_new_option": 1})
    with pytest.raises(ValueError, match="down_block_types"):
        vae_config_from_diffusers({**good, "down_block_types": ["AttnDownEncoderBlock2D"] * 4})


def test_official_map_names_missing_keys():
    cfg = TINY
    shapes = _shapes(VAE(cfg))
    checkpoint = {
        k: tuple(v.shape) for k, v in official_vae_map(cfg).to_theirs(VAE(cfg).state_dict()).items()
    }
    del checkpoint["first_stage_model.decoder.conv_out.time_mix_conv.weight"]
    with pytest.raises(KeyMapError, match="time_mix_conv"):
        official_vae_map(cfg).check(checkpoint, shapes)
