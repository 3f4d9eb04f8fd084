"""`svd-core parity`: live agreement with diffusers on random tiny weights, a perturbed block found as
the first divergence (in Python and through the command line), the block correspondence, the
metrics and the first-jump rule against independent computations, the reports, and bad arguments."""

from __future__ import annotations

import copy
import json
import math
import re
import subprocess
import sys

import pytest
import torch

import svd_core.cli
from svd_core import SVDConfig, save
from svd_core.loading.clip_maps import diffusers_clip_map, transformers_clip_config
from svd_core.loading.unet_maps import diffusers_unet_config, diffusers_unet_map
from svd_core.loading.vae_maps import diffusers_vae_config, diffusers_vae_map
from svd_core.model import SVDModel
from svd_core.parity import (
    COMPONENTS,
    ParityOptions,
    build_reference,
    measure_known_differences,
    random_model,
    run_parity,
)
from svd_core.parity import run as parity_run
from svd_core.parity.blocks import counterpart, match_blocks, probed_modules
from svd_core.parity.components import Setup, conditioning_image
from svd_core.parity.reference import (
    ReferenceUnavailableError,
    differing_norm_eps,
    import_reference,
)
from svd_core.parity.report import (
    FLOOR_FRACTION,
    Comparison,
    ComponentResult,
    compare,
    first_jump,
    psnr,
)

pytest.importorskip("diffusers")

# A perturbation of one block's weights: noise of this size relative to the weights' own scale.
PERTURBATION = 0.5
# Float32 round-off of the whole run with numerics="diffusers", far below every tolerance: the
# networks measure 0 to 4e-6 relative on these weights, the 3-step sampling run 1e-5.
ROUND_OFF = 1e-4
# Float64 round-off of the same run: the float32 allowance scaled by the ratio of the two machine
# epsilons (2^-52 / 2^-23), about 2e-13. Questions of definition (which eps does each library use?)
# are asked in float64, where the two UNets computing the same function agree to this.
FLOAT64_ROUND_OFF = ROUND_OFF * torch.finfo(torch.float64).eps / torch.finfo(torch.float32).eps
# PSNR of the two videos in float32: round-off only (measured 120 dB).
MIN_PSNR_DB = 90.0


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    """random:tiny with seed 0: what `svd-core parity --model random:tiny` builds."""
    return random_model(SVDConfig.tiny(), seed=0)


@pytest.fixture(scope="module")
def reference(model):
    """diffusers' pipeline with the same weights, through svd_core.save and from_pretrained."""
    return build_reference(model)


@pytest.fixture(scope="module")
def report(model, reference):
    return run_parity(copy.deepcopy(model), ParityOptions(), "random:tiny", reference=reference)


def _perturb(module: torch.nn.Module, seed: int = 1) -> None:
    """Add noise to every weight of `module`, PERTURBATION x its own standard deviation."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.ndim >= 2:
                noise = torch.randn(parameter.shape, generator=generator)
                parameter.add_(noise * PERTURBATION * parameter.std())


# ---- agreement -------------------------------------------------------------------------------------


def test_report_on_tiny_random_weights_shows_agreement(report, model):
    assert [c.name for c in report.components] == list(COMPONENTS)
    for component in report.components:
        print(
            f"\n{component.name}: rel {component.output.relative:.2e} (tolerance "
            f"{component.tolerance:.0e}), cosine {component.output.cosine:.9f}, "
            f"{len(component.blocks)} blocks, first jump {component.first_divergence}"
        )
        assert component.passed, component.name
        assert component.output.relative < ROUND_OFF, component.name
        assert component.first_divergence is None, component.name
        assert component.output.cosine > 1 - 1e-9
        assert all(block.relative < ROUND_OFF for block in component.blocks), component.name
    assert report.passed
    # Every block of the networks found its counterpart and was compared once.
    networks = {
        "image_encoder": (model.image_encoder, [""]),
        "vae_encode": (model.vae, ["encoder.", "quant_conv"]),
        "unet": (model.unet, [""]),
        "vae_decode": (model.vae, ["decoder.", "post_quant_conv"]),
    }
    for name, (network, prefixes) in networks.items():
        component = report.component(name)
        expected = probed_modules(network, prefixes, "fine")
        if name == "image_encoder":
            expected = ["patch_embed (input)", *expected]  # the preprocessed pixels
        assert component.skipped == [], component.skipped
        assert sorted(b.ours for b in component.blocks) == sorted(expected), name
    # The sampling run: both pipelines, same video up to round-off; a video that changes.
    run = report.component("sampling_run")
    assert run.psnr > MIN_PSNR_DB
    assert [b.ours for b in run.blocks[:3]] == [f"latents after step {i}" for i in (1, 2, 3)]
    step = report.component("sampler_step")
    assert [b.ours for b in step.blocks][0] == "karras_sigmas(n)"


def test_report_header_names_versions_device_and_settings(report):
    import diffusers
    import transformers

    header = report.header
    assert header["torch"] == torch.__version__
    assert header["diffusers"] == diffusers.__version__
    assert header["transformers"] == transformers.__version__
    assert header["device"].startswith("cpu")
    assert header["dtype"] == "float32" and header["numerics"] == "diffusers"
    assert header["size"] == "64x64" and header["frames"] == "5" and header["seed"] == "0"
    assert header["model"] == "random:tiny (tiny)"


def test_markdown_and_json_reports_are_written(report, tmp_path):
    markdown = report.save(tmp_path / "parity.md").read_text()
    assert markdown.startswith("# svd-core parity: PASSED")
    assert f"| torch | {torch.__version__} |" in markdown
    for name in COMPONENTS:
        assert f"| {name} |" in markdown and f"## {name} (" in markdown
    assert "`encoder.1.res_blocks.0.temporal` | `down_blocks.1.resnets.0.temporal_res_block`" in (
        markdown
    )
    data = json.loads(report.save(tmp_path / "parity.json").read_text())
    assert data["passed"] is True
    assert [c["name"] for c in data["components"]] == list(COMPONENTS)
    unet = data["components"][COMPONENTS.index("unet")]
    assert unet["output"]["relative"] == report.component("unet").output.relative
    assert unet["first_divergence"] is None
    assert len(unet["blocks"]) == len(report.component("unet").blocks) > 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parity.json", "parity.md"]
    with pytest.raises(ValueError, match=r"\.md or \.json"):
        report.save(tmp_path / "parity.txt")


# ---- finding a divergence ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("component", "network", "block", "detail", "named"),
    [
        ("unet", "unet", "encoder.1.res_blocks.0.temporal", "fine", None),
        ("unet", "unet", "encoder.1.res_blocks.0.temporal", "blocks", "encoder.1.res_blocks.0"),
        ("vae_decode", "vae", "decoder.levels.2.blocks.1.temporal", "fine", None),
        ("image_encoder", "image_encoder", "blocks.1", "fine", None),
    ],
)
def test_perturbed_block_is_found_as_first_divergence(
    model, reference, component, network, block, detail, named
):
    perturbed = copy.deepcopy(model)
    _perturb(getattr(perturbed, network).get_submodule(block))
    options = ParityOptions(components=(component,), detail=detail)
    result = run_parity(perturbed, options, reference=reference).component(component)
    jump = result.first_divergence
    print(
        f"\n{component}: first jump {jump.ours} rel {jump.relative:.2e}; output rel "
        f"{result.output.relative:.2e}"
    )
    assert jump.ours == (named or block)
    assert not result.passed
    names = [b.ours for b in result.blocks]
    before = result.blocks[: names.index(jump.ours)]
    assert before and all(b.relative < ROUND_OFF for b in before)
    assert jump.relative > 100 * ROUND_OFF


def test_official_numerics_find_diffusers_group_norm_eps(model, reference):
    """numerics="official" keeps eps 1e-5; diffusers has 1e-6 in its cross-attention down blocks'
    res blocks: the first jump is the first such block, and the report says how big it is.

    That the eps is the only difference of definition is checked in float64 (both UNets): with
    diffusers' eps the two then agree to float64 round-off, while the eps effect keeps its float32
    size. (In float32 svd_core's inference paths leave about 2e-6 of round-off of their own.)
    """
    ours = copy.deepcopy(model)
    differing = differing_norm_eps(ours.unet, reference.unet, diffusers_unet_map(ours.config.unet))
    assert "encoder.0.res_blocks.0.spatial.norm1" in differing
    assert not any(name.startswith(("encoder.2.", "middle.")) for name in differing)
    options = ParityOptions(numerics="official", components=("unet",))
    official = run_parity(ours, options, reference=reference).component("unet")
    print(f"\nofficial numerics vs diffusers: UNet rel {official.output.relative:.2e}")
    assert official.first_divergence.ours == "encoder.0.res_blocks.0.spatial"
    assert official.output.relative > 1e-5  # a tenth of the float32 tolerance: the report shows it

    wide = {"dtype": torch.float64, "components": ("unet",)}
    theirs = copy.deepcopy(reference)  # cast in place to float64 by the runs
    official64 = run_parity(
        copy.deepcopy(model), ParityOptions(numerics="official", **wide), reference=theirs
    )
    same64 = run_parity(copy.deepcopy(model), ParityOptions(**wide), reference=theirs)
    assert official64.header["dtype"] == same64.header["dtype"] == "float64"
    assert parity_run.FLOAT64_NOTE in same64.notes
    unet_official, unet_same = official64.component("unet"), same64.component("unet")
    print(
        f"float64: official numerics {unet_official.output.relative:.2e}, "
        f"diffusers' numerics {unet_same.output.relative:.2e}"
    )
    assert unet_official.first_divergence.ours == "encoder.0.res_blocks.0.spatial"
    # The eps effect is a property of the two definitions: float32 round-off (2e-6 here) moves
    # it by about a percent, far less than this.
    assert math.isclose(unet_official.output.relative, official.output.relative, rel_tol=0.1)
    assert unet_same.output.relative < FLOAT64_ROUND_OFF
    assert all(block.relative < FLOAT64_ROUND_OFF for block in unet_same.blocks)


# ---- the command line ------------------------------------------------------------------------------


@pytest.fixture
def reuse_reference(monkeypatch, model, reference):
    """The command builds random:tiny seed 0, the fixture's weights: reuse the fixture reference
    instead of building it again; `perturb` lists blocks of our side to perturb first."""
    perturb: list[str] = []

    def build(ours):
        assert torch.equal(ours.unet.conv_in.weight, model.unet.conv_in.weight)
        for name in perturb:
            _perturb(ours.get_submodule(name))
        return reference

    monkeypatch.setattr(parity_run, "build_reference", build)
    return perturb


def _parity_args(*extra: str, model: str = "random:tiny") -> list[str]:
    return ["parity", "--model", model, "--components", "unet,sampler_step", *extra]


def test_cli_checkpoint_file_agrees_exits_0_and_writes_reports(
    reuse_reference, model, tmp_path, capsys
):
    checkpoint = save(model, tmp_path / "tiny.safetensors")  # an official single file
    markdown, data = tmp_path / "r.md", tmp_path / "r.json"
    args = _parity_args("--report", str(markdown), "--report", str(data), model=str(checkpoint))
    assert svd_core.cli.main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("# svd-core parity: PASSED") and "| unet |" in out
    assert f"| model | {checkpoint} (tiny) |" in out
    assert json.loads(data.read_text())["passed"] is True
    assert markdown.read_text().startswith("# svd-core parity: PASSED")


def test_cli_perturbed_block_exits_1_and_names_it(reuse_reference, tmp_path, capsys):
    reuse_reference.append("unet.encoder.1.res_blocks.0.temporal")
    data = tmp_path / "r.json"
    assert svd_core.cli.main(_parity_args("--report", str(data))) == 1
    out = capsys.readouterr().out
    assert out.startswith("# svd-core parity: FAILED")
    assert "`encoder.1.res_blocks.0.temporal`" in out
    unet = json.loads(data.read_text())["components"][0]
    assert unet["passed"] is False
    assert unet["first_divergence"] == "encoder.1.res_blocks.0.temporal"


def test_cli_tolerance_option_decides_the_exit_code(reuse_reference, capsys):
    """A tolerance below the measured error fails; the defaults pass (previous test)."""
    assert svd_core.cli.main(_parity_args("--tolerance", "sampler_step=1e-12")) == 1
    out = capsys.readouterr().out
    assert "| sampler_step |" in out and "**FAIL**" in out


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--size", "64"], "HEIGHTxWIDTH"),
        (["--size", "64xabc"], "HEIGHTxWIDTH"),
        (["--size", "48x64"], "multiples of 32"),
        (["--frames", "0"], "--frames must be at least 1"),
        (["--against", "comfyui"], "unknown reference 'comfyui'"),
        (["--dtype", "float8"], "--dtype must be one of"),
        (["--dtype", "float64"], "dtype float64 compares the networks only, not ['sampler_step'"),
        (["--numerics", "fast"], "numerics must be one of"),
        (["--components", "unet,vae"], "unknown components ['vae']"),
        (["--tolerance", "tight"], "--tolerance 'tight'"),
        (["--tolerance", "clip=1e-3"], "unknown component 'clip'"),
        (["--detail", "all"], "detail must be one of"),
        (["--steps", "0"], "num_steps must be a positive integer"),
        (["--report", "out.txt"], ".md (Markdown) or .json"),
        (["--report", "nowhere/out.md"], "does not exist"),
        (["--image", "missing.png"], "missing.png"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(extra, named, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(parity_run, "build_reference", lambda model: pytest.fail("ran anyway"))
    assert svd_core.cli.main(["parity", "--model", "random:tiny", *extra]) == 2
    error = capsys.readouterr().err
    assert error.startswith("svd-core: error:") and error.count("\n") == 1, error
    assert named in error, error
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("model_arg", "named"),
    [("missing.safetensors", "missing.safetensors"), ("random:huge", "unknown preset")],
)
def test_bad_model_exits_2_with_one_line(model_arg, named, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert svd_core.cli.main(["parity", "--model", model_arg]) == 2
    error = capsys.readouterr().err
    assert error.startswith("svd-core: error:") and error.count("\n") == 1, error
    assert named in error, error


@pytest.mark.parametrize(
    ("components", "named"),
    [
        ([], "vae_encode, vae_decode, sampling_run cannot"),
        (["--components", "unet,vae_decode"], ": vae_decode cannot"),
    ],
)
def test_vae_diffusers_cannot_build_is_one_line_naming_what_can_be_compared(
    components, named, capsys, monkeypatch
):
    """tiny_demo's VAE has 8 GroupNorm groups, diffusers' temporal VAE 32: the components that run
    the reference's VAE are refused before any weights are built, with the ones that can run."""
    assert "num_groups=8" in parity_run.vae_without_counterpart(SVDConfig.tiny_demo())
    monkeypatch.setattr(parity_run, "build_reference", lambda model: pytest.fail("ran anyway"))
    monkeypatch.setattr(parity_run, "random_model", lambda *a: pytest.fail("built weights"))
    assert svd_core.cli.main(["parity", "--model", "random:tiny_demo", *components]) == 2
    error = capsys.readouterr().err
    assert error.startswith("svd-core: error:") and error.count("\n") == 1, error
    assert "num_groups=8" in error and named in error, error
    assert error.rstrip().endswith("--components image_encoder,unet,sampler_step"), error


def test_model_whose_vae_diffusers_cannot_build_compares_unet_image_encoder_and_sampler():
    """The reference of tiny_demo is diffusers' pipeline without a VAE; the other components agree
    as they do on tiny, and asking it for a VAE component is the same clear error."""
    model = random_model(SVDConfig.tiny_demo(), seed=0)
    reference = build_reference(model)
    assert reference.vae is None
    options = ParityOptions(components=("image_encoder", "unet", "sampler_step"))
    report = run_parity(copy.deepcopy(model), options, "random:tiny_demo", reference=reference)
    for component in report.components:
        print(f"\n{component.name}: rel {component.output.relative:.2e}")
        assert component.output.relative < ROUND_OFF, component.name
        assert component.first_divergence is None and component.skipped == [], component.name
    assert report.passed and len(report.component("unet").blocks) > 50
    # The reference holds our weights, not merely weights of the same shapes: a perturbed block
    # of ours is found.
    perturbed = copy.deepcopy(model)
    _perturb(perturbed.unet.get_submodule("encoder.1.res_blocks.0.temporal"))
    unet_only = ParityOptions(components=("unet",))
    result = run_parity(perturbed, unet_only, reference=reference).component("unet")
    assert result.first_divergence.ours == "encoder.1.res_blocks.0.temporal"
    with pytest.raises(
        parity_run.ParityError, match=r"num_groups=8.*: vae_encode cannot be compared"
    ):
        run_parity(model, ParityOptions(components=("vae_encode",)), reference=reference)


def test_missing_reference_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now raises ImportError
    with pytest.raises(ReferenceUnavailableError, match="pip install diffusers transformers"):
        import_reference()
    assert svd_core.cli.main(["parity", "--model", "random:tiny"]) == 2
    error = capsys.readouterr().err
    assert "pip install diffusers transformers" in error and error.count("\n") == 1


def test_svd_core_does_not_import_the_reference():
    code = (
        "import sys, svd_core, svd_core.cli, svd_core.parity; "
        "assert 'diffusers' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- block correspondence ----------------------------------------------------------------------------


def test_counterparts_come_from_the_key_maps(model, reference):
    cfg = model.config
    unet_map, vae_map = diffusers_unet_map(cfg.unet), diffusers_vae_map(cfg.vae)
    clip_map = diffusers_clip_map(cfg.image_encoder)
    cases = [
        (reference.unet, unet_map, "encoder.1.res_blocks.0", "down_blocks.1.resnets.0"),
        (
            reference.unet,
            unet_map,
            "encoder.1.res_blocks.0.blend",
            "down_blocks.1.resnets.0.time_mixer",
        ),
        (reference.unet, unet_map, "encoder.2", "down_blocks.2"),  # not its ModuleList .resnets
        (reference.unet, unet_map, "decoder.2", "up_blocks.0"),  # diffusers counts deepest first
        (reference.unet, unet_map, "decoder.1.upsample", "up_blocks.1.upsamplers.0.conv"),
        (reference.unet, unet_map, "middle.transformer", "mid_block.attentions.0"),
        (reference.vae, vae_map, "decoder.levels.3.blocks.0", "decoder.up_blocks.0.resnets.0"),
        (reference.vae, vae_map, "decoder.mid.attention", "decoder.mid_block.attentions.0"),
        (reference.image_encoder, clip_map, "blocks.1", "vision_model.encoder.layers.1"),
    ]
    for theirs, key_map, name, expected in cases:
        assert counterpart(name, key_map, theirs) == (expected, ""), name
    # Our attention's q, k, v, out live in diffusers' Attention module beside its GroupNorm.
    name, why = counterpart("decoder.mid.attention.attn", vae_map, reference.vae)
    assert name is None and "decoder.mid_block.attentions.0" in why and "group_norm" in why


def test_detail_levels_choose_the_blocks(model, reference):
    fine = probed_modules(model.unet, [""], "fine")
    blocks = probed_modules(model.unet, [""], "blocks")
    assert set(blocks) < set(fine)
    assert "encoder.1.res_blocks.0" in blocks and "encoder.1.res_blocks.0.temporal" not in blocks
    assert {"conv_in", "time_embed", "vector_embed", "norm_out", "conv_out"} <= set(blocks)
    pairs, skipped = match_blocks(
        model.unet, reference.unet, diffusers_unet_map(model.config.unet), detail="fine"
    )
    assert skipped == [] and len(pairs) == len(fine)
    notes = {pair.ours: pair.note for pair in pairs}
    assert "(B, H·W, F, C) → (B·F, H·W, C)" in notes["encoder.0.transformers.0.temporal_blocks.0"]
    assert "(B, C, F, H, W)" in notes["encoder.0.res_blocks.0.blend"]
    assert notes["encoder.0.transformers.0.blend"] == ""  # same layout on both sides


# ---- metrics and the first-jump rule -------------------------------------------------------------------


def test_metrics_match_hand_computation():
    row = compare("a", "b", torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 4.0]))
    assert row.max_abs == 1.0 and row.relative == 0.25
    assert math.isclose(row.cosine, 17 / math.sqrt(14 * 21), rel_tol=1e-12)
    assert compare("a", "b", torch.zeros(3), torch.zeros(3)).relative == 0.0
    assert compare("a", "b", torch.ones(2), torch.zeros(2)).relative == math.inf
    exact = torch.full((4,), 0.1, dtype=torch.float64)
    assert math.isclose(psnr(torch.zeros(4, dtype=torch.float64), exact), 20.0, rel_tol=1e-12)
    assert psnr(torch.ones(3), torch.ones(3)) == math.inf
    with pytest.raises(ValueError, match=r"shape \(2,\).*shape \(3,\)"):
        compare("a", "b", torch.zeros(2), torch.zeros(3))


def _rows(*errors: float) -> list[Comparison]:
    return [Comparison(f"b{i}", f"t{i}", e, e, 1.0, ()) for i, e in enumerate(errors)]


def test_first_jump_rule():
    floor = 1e-5
    # Round-off that grows gradually stays under the floor: no jump.
    assert first_jump(_rows(0.0, 1e-7, 3e-7, 9e-7, 2e-6), floor) is None
    # A block 10x over the median before it and over the floor is the jump.
    assert first_jump(_rows(0.0, 1e-7, 2e-7, 5e-3, 1e-2), floor) == 3
    # Over the floor but not 10x the median before it: errors that merely keep growing.
    assert first_jump(_rows(2e-5, 3e-5, 4e-5), floor) == 0
    assert first_jump(_rows(0.0, float("nan")), floor) == 1
    result = ComponentResult("x", _rows(1e-3)[0], tolerance=1e-4, blocks=_rows(0.0, 2e-5))
    assert result.first_divergence.ours == "b1" and FLOOR_FRACTION * result.tolerance < 2e-5
    assert not result.passed


# ---- known differences ----------------------------------------------------------------------------


def test_known_differences_are_measured_and_documented(model, reference):
    import svd_core.parity.differences as differences

    options = ParityOptions(numerics="official").resolved(model.config)
    setup = Setup(
        copy.deepcopy(model),
        reference,
        options.height,
        options.width,
        options.num_frames,
        options.num_steps,
        options.seed,
        options.dtype,
        options.numerics,
        options.detail,
        conditioning_image(options.height, options.width, options.seed),
    )
    rows = measure_known_differences(setup)
    for row in rows:
        print(f"\n{row.name}: {row.measured}")
        assert f"| {row.name} |" in differences.__doc__, row.name  # the documented table
    by_name = {row.name: row for row in rows}
    assert len(by_name) == 8
    eps = by_name["GroupNorm eps of UNet res blocks"]
    assert eps.diffusers.startswith("1e-6 in ") and "encoder.0" in eps.diffusers
    # Measured in float64: with diffusers' eps the two UNets compute the same function.
    measured = re.fullmatch(
        r"UNet output (\S+) rel\.; (\S+) with diffusers' eps \(float64\)", eps.measured
    )
    assert measured, eps.measured
    official, adopted = (float(value) for value in measured.groups())
    assert official > 1e-5 and adopted < FLOAT64_ROUND_OFF
    # Both networks are back in float32, with their own weights.
    for network in (setup.model.unet, reference.unet):
        assert {p.dtype for p in network.parameters()} == {torch.float32}
    assert torch.equal(setup.model.unet.conv_in.weight, model.unet.conv_in.weight)
    assert "0 in float32 (exact)" in by_name["latent dtype between steps"].measured


@pytest.mark.parametrize("preset", ["svd_xt", "svd_image_decoder"])
def test_every_full_size_block_has_a_counterpart_on_meta(preset):
    """The correspondence at full size (four UNet levels, ViT-H/14, both decoders), on the meta
    device: shapes and names only, no memory."""
    import diffusers
    import transformers

    cfg = getattr(SVDConfig, preset)()
    vae_kwargs = diffusers_vae_config(cfg.vae)
    vae_class = getattr(diffusers, vae_kwargs.pop("_class_name"))
    clip_config = transformers.CLIPVisionConfig(**transformers_clip_config(cfg.image_encoder))
    with torch.device("meta"):
        ours = SVDModel(cfg)
        networks = [
            (
                ours.unet,
                diffusers.UNetSpatioTemporalConditionModel(**diffusers_unet_config(cfg.unet)),
                diffusers_unet_map(cfg.unet),
            ),
            (ours.vae, vae_class(**vae_kwargs), diffusers_vae_map(cfg.vae)),
            (
                ours.image_encoder,
                transformers.CLIPVisionModelWithProjection(clip_config),
                diffusers_clip_map(cfg.image_encoder),
            ),
        ]
    for network, theirs, key_map in networks:
        pairs, skipped = match_blocks(network, theirs, key_map, detail="fine")
        assert skipped == [], skipped[:3]
        assert len(pairs) == len(probed_modules(network, [""], "fine")) > 10
