"""The component and end-to-end benchmarks on the tiny preset, so that their code cannot rot.

Structure, inputs, results files, README tables and the agreement numbers they report; never a
timing threshold.
"""

import json

import pytest
import torch

from benchmarks import bench_components, bench_e2e
from benchmarks.make_weights import diffusers_path, make_weights, official_path

torch.set_num_threads(1)

# The same random weights in both layouts, float32: our VAE and image encoder agree with diffusers'
# to round-off (the parity tolerance of a whole network, /work/shared/DESIGN.md: about 1e-4
# relative).
WHOLE_NETWORK_RTOL = 1e-4


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    pytest.importorskip("diffusers")
    cache = tmp_path_factory.mktemp("bench_cache")
    make_weights(cache, "tiny", ("float32",), log=lambda line: None)
    return cache


@pytest.mark.parametrize("case", bench_components.CASES)
def test_each_component_case_gives_the_same_output_shape_in_both_libraries(cache, tmp_path, case):
    outputs = {}
    for library, source in (
        ("svd_core", official_path(cache, "tiny", "float32")),
        ("diffusers", diffusers_path(cache, "tiny")),
    ):
        outputs[library] = tmp_path / f"{library}.pt"
        result = bench_components.measure(
            library, case, str(source), size=64, frames=3, output=str(outputs[library])
        )
        assert result["seconds"] > 0 and result["load_s"] > 0
        assert result["warmup_calls"] == (0 if case.startswith("vae-decode") else 1)
    expected = {
        "vae-decode": "1x3x3x64x64",
        "vae-encode": "1x4x8x8",
        "clip-encode": "1x32",
        "clip-vit": "1x32",
    }
    assert result["output_shape"] == expected[bench_components.parse_case(case)[0]]
    errors = bench_components.compare(str(outputs["svd_core"]), str(outputs["diffusers"]))
    assert errors["max_rel_error"] < WHOLE_NETWORK_RTOL, errors
    assert errors["max_abs_error"] == pytest.approx(
        float((torch.load(outputs["svd_core"]) - torch.load(outputs["diffusers"])).abs().max()),
        rel=1e-6,
    )


def test_component_inputs_are_seeded_and_shaped():
    latents = bench_components.make_input("vae-decode", 64, 3, 0, 224)
    assert latents.shape == (1, 3, 4, 8, 8)
    assert torch.equal(latents, bench_components.make_input("vae-decode", 64, 3, 0, 224))
    image = bench_components.make_input("vae-encode", 64, 3, 1, 224)
    assert image.shape == (1, 3, 64, 64) and -1 <= image.min() and image.max() <= 1
    assert bench_components.make_input("clip-vit", 64, 3, 0, 56).shape == (1, 3, 56, 56)


def test_component_case_names():
    assert bench_components.parse_case("vae-decode-chunk7") == ("vae-decode", 7)
    assert bench_components.parse_case("clip-vit") == ("clip-vit", None)
    for bad in ("vae-decode-chunk0", "vae-decode-chunkx", "unet"):
        with pytest.raises(ValueError, match="a case is one of"):
            bench_components.parse_case(bad)
    with pytest.raises(SystemExit):
        bench_components.main(["--cases", "unet"])
    with pytest.raises(SystemExit):
        bench_components.main(["--size", "100"])


def test_bench_components_end_to_end_writes_results_and_the_readme_table(cache, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# benchmarks\n\nIntro that must stay.\n")
    argv = ["--preset", "tiny", "--cache", str(cache), "--runs", "1", "--warmup", "0",
            "--threads", "1", "--size", "64", "--frames", "3",
            "--cases", "vae-decode-chunk2", "clip-encode",
            "--results-dir", str(tmp_path / "results"), "--readme", str(readme),
            "--machine", "testbox"]  # fmt: skip
    data = bench_components.main(argv)

    assert set(data["rows"]) == {"vae-decode-chunk2", "clip-encode"}
    for row in data["rows"].values():
        ours, theirs = row["svd_core"], row["diffusers"]
        assert ours["seconds"] > 0 and theirs["seconds"] > 0
        assert row["ratio_seconds"] == ours["seconds"] / theirs["seconds"]
        assert row["speedup"] == pytest.approx(1 / row["ratio_seconds"])
        assert ours["peak_rss_bytes"] > 0 and len(ours["runs"]) == len(theirs["runs"]) == 1
        assert ours["output_shape"] == theirs["output_shape"]
        assert row["max_rel_error"] < WHOLE_NETWORK_RTOL
    assert data["rows"]["vae-decode-chunk2"]["svd_core"]["output_shape"] == "1x3x3x64x64"

    [results] = (tmp_path / "results").glob("testbox-*.json")
    stored = json.loads(results.read_text())
    assert stored["benchmarks"]["components"]["machine"]["threads"] == 1
    assert set(stored["benchmarks"]["components"]["rows"]) == set(data["rows"])

    text = readme.read_text()
    assert text.startswith("# benchmarks\n\nIntro that must stay.\n")
    rows = [line for line in text.splitlines() if line.startswith("| vae-decode-chunk2")]
    assert len(rows) == 1
    assert "`python benchmarks/bench_components.py --cases vae-decode-chunk2 --runs 1" in rows[0]
    assert "--threads 1 --size 64 --frames 3 --preset tiny`" in rows[0]

    again = tmp_path / "again.md"
    bench_components.main(["--render-only", str(results), "--readme", str(again)])
    section = text[text.index("<!-- components:begin -->") :]
    assert again.read_text().strip() == section.strip()


def test_bench_e2e_end_to_end_writes_results_and_the_readme_table(cache, tmp_path):
    readme = tmp_path / "README.md"
    argv = ["--preset", "tiny", "--cache", str(cache), "--runs", "1", "--warmup", "0",
            "--threads", "1", "--size", "64", "--frames", "3", "--steps", "2",
            "--decode-chunk", "3", "--variants", *bench_e2e.VARIANTS,
            "--results-dir", str(tmp_path / "results"), "--readme", str(readme),
            "--machine", "testbox"]  # fmt: skip
    data = bench_e2e.main(argv)

    rows = data["rows"]
    assert set(rows) == set(bench_e2e.VARIANTS)
    for row in rows.values():
        assert row["total_s"] == pytest.approx(row["load_s"] + row["generate_s"])
        assert row["peak_rss_bytes"] >= row["peak_after_load_bytes"] > 0
        assert row["ratio_peak_rss"] == row["peak_rss_bytes"] / rows["diffusers"]["peak_rss_bytes"]
    assert rows["diffusers"]["max_abs_error"] == 0.0
    # Low memory changes nothing but where the weights are: with the branches batched the frames
    # are the plain run's, bit for bit, so their distance to diffusers' is the same number.
    assert rows["svd_core-low-memory-batched"]["max_abs_error"] == rows["svd_core"]["max_abs_error"]
    for variant in ("svd_core", "svd_core-low-memory"):
        assert 0 <= rows[variant]["max_abs_error"] < 1  # frames in [0, 1], all finite

    [results] = (tmp_path / "results").glob("testbox-*.json")
    assert set(json.loads(results.read_text())["benchmarks"]["e2e"]["rows"]) == set(rows)
    text = readme.read_text()
    assert "<!-- e2e:begin -->" in text and "<!-- e2e:end -->" in text
    [low] = [line for line in text.splitlines() if line.startswith("| svd_core-low-memory |")]
    assert (
        "`python benchmarks/bench_e2e.py --variants diffusers svd_core-low-memory --runs 1" in low
    )
    assert "--steps 2" in low and "--decode-chunk 3" in low


def test_bench_e2e_rejects_unknown_variants_and_sizes():
    with pytest.raises(ValueError, match="variant must be one of"):
        bench_e2e.measure("onnx", "nowhere")
    with pytest.raises(SystemExit):
        bench_e2e.main(["--variants", "onnx"])
    with pytest.raises(SystemExit):
        bench_e2e.main(["--size", "96"])
    image = bench_e2e.make_image(64, seed=1)
    assert image.size == (64, 64) and image.mode == "RGB"
