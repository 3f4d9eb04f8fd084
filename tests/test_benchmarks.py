"""The benchmark harness on the tiny config, so the benchmark code cannot rot. No timing thresholds."""

import json

import pytest
import torch

import svd_core
from benchmarks import bench_gpu, bench_loading, bench_unet, common
from benchmarks.make_weights import diffusers_path, make_weights, official_path
from svd_core import SVDConfig
from svd_core.loading import save
from svd_core.loading.files import read_header, read_metadata
from svd_core.model import SVDModel

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("bench_cache")
    make_weights(cache, "tiny", log=lambda line: None)
    return cache


def _saved_by_svd_core(tmp_path, dtype: torch.dtype):
    """The files `svd_core.save` writes for a random tiny model: the layout make_weights must match."""
    torch.manual_seed(0)
    model = SVDModel(SVDConfig.tiny())
    official = save(model, tmp_path / "tiny.safetensors", dtype=dtype)
    variant = "fp16" if dtype == torch.float16 else None
    folder = save(model, tmp_path / "diffusers", layout="diffusers", dtype=dtype, variant=variant)
    return official, folder


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_make_weights_writes_the_layout_svd_core_save_writes(cache, tmp_path, dtype):
    torch_dtype = getattr(torch, dtype)
    official, folder = _saved_by_svd_core(tmp_path, torch_dtype)
    ours = official_path(cache, "tiny", dtype)
    assert read_header(ours) == read_header(official)
    assert read_metadata(ours) == read_metadata(official)
    written = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    ours_folder = diffusers_path(cache, "tiny")
    for relative in written:
        expected, got = folder / relative, ours_folder / relative
        if relative.suffix == ".json":
            assert json.loads(got.read_text()) == json.loads(expected.read_text()), relative
        else:
            assert read_header(got) == read_header(expected), relative


def test_every_file_holds_the_same_model(cache):
    reference = svd_core.load(official_path(cache, "tiny", "float32")).state_dict()
    folder = diffusers_path(cache, "tiny")
    same_dtype = svd_core.load(folder).state_dict()
    as_fp16 = svd_core.load(folder, dtype=torch.float16, variant="fp16").state_dict()
    official_fp16 = svd_core.load(official_path(cache, "tiny", "float16"), dtype=torch.float16)
    for name, tensor in reference.items():
        assert torch.equal(same_dtype[name], tensor), name
        assert torch.equal(as_fp16[name], tensor.half()), name
        assert torch.equal(official_fp16.state_dict()[name], tensor.half()), name
    weights = [t for n, t in reference.items() if n.endswith("weight") and t.numel() > 1000]
    assert weights and all(
        0.01 < float(t.std()) < 0.03 for t in weights
    )  # small normal noise, std 0.02


def test_make_weights_keeps_complete_files_and_rewrites_damaged_ones(cache):
    path = official_path(cache, "tiny", "float16")
    lines = []
    make_weights(cache, "tiny", ("float16",), ("official",), log=lines.append)
    assert lines == [f"kept  {path}"]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    lines.clear()
    make_weights(cache, "tiny", ("float16",), ("official",), log=lines.append)
    assert lines == [f"wrote {path}"]
    assert path.read_bytes() == data


def test_make_weights_rejects_unknown_names(tmp_path):
    with pytest.raises(ValueError, match="preset must be one of"):
        make_weights(tmp_path, "svd_huge")
    with pytest.raises(ValueError, match="dtype must be one of"):
        make_weights(tmp_path, "tiny", ("int8",))
    with pytest.raises(ValueError, match="layout must be one of"):
        make_weights(tmp_path, "tiny", layouts=("ckpt",))


def test_bench_loading_end_to_end_writes_results_and_the_readme_table(cache, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# benchmarks\n\nIntro that must stay.\n")
    argv = ["--preset", "tiny", "--cache", str(cache), "--runs", "1", "--warmup", "0",
            "--dtypes", "float32-to-float16", "--loaders", "svd_core-official", "diffusers",
            "--results-dir", str(tmp_path / "results"), "--readme", str(readme),
            "--machine", "testbox"]  # fmt: skip
    data = bench_loading.main(argv)

    # One fresh process per measurement; weights counted independently from a tiny model in fp16.
    tiny = SVDModel(SVDConfig.tiny())
    expected = sum(2 * p.numel() for p in tiny.parameters()) + sum(
        b.numel() * b.element_size() for b in tiny.buffers()
    )
    ours, theirs = (
        data["rows"][f"{x}-float32-to-float16"] for x in ("svd_core-official", "diffusers")
    )
    assert ours["weight_bytes"] == expected
    assert ours["loaded_dtypes"] == "torch.float16,torch.float32"  # the CLIP constants stay float32
    assert theirs["loaded_dtypes"] == "torch.float16"
    for row in (ours, theirs):
        assert (
            row["peak_rss_bytes"] >= row["peak_after_load_bytes"] >= row["baseline_rss_bytes"] > 0
        )
        assert row["ready_s"] >= row["load_s"] > 0
        assert row["ratio_peak_to_weights"] == row["peak_rss_bytes"] / row["weight_bytes"]
        assert len(row["runs"]) == 1
    assert set(data["baselines"]) == {"svd_core", "diffusers"}

    [results] = (tmp_path / "results").glob("testbox-*.json")
    stored = json.loads(results.read_text())
    machine = stored["benchmarks"]["loading"]["machine"]
    assert machine["threads"] == 1 and machine["cpu"]
    assert set(stored["benchmarks"]["loading"]["rows"]) == set(data["rows"])

    text = readme.read_text()
    assert text.startswith("# benchmarks\n\nIntro that must stay.\n")
    assert "<!-- loading:begin -->" in text and "<!-- loading:end -->" in text
    table_rows = [line for line in text.splitlines() if line.startswith("| svd_core-official")]
    assert len(table_rows) == 2  # the measured row and its ratio to diffusers
    assert "`python benchmarks/bench_loading.py --dtypes float32-to-float16" in table_rows[0]
    assert "float32 → float16" in table_rows[0]

    again = tmp_path / "again.md"
    bench_loading.main(["--render-only", str(results), "--readme", str(again)])
    section = text[text.index("<!-- loading:begin -->") :]
    assert again.read_text().strip() == section.strip()


def test_run_in_subprocess_reports_a_failing_measurement():
    with pytest.raises(common.BenchmarkError, match="library must be one of"):
        common.run_in_subprocess("benchmarks.bench_loading:measure_imports", {"library": "jax"})


def test_median_table_results_and_readme_helpers(tmp_path):
    runs = [{"t": 3.0, "n": 1, "name": "a"}, {"t": 1.0, "n": 5, "name": "b"}, {"t": 2.0, "n": 2, "name": "c"}]  # fmt: skip
    assert common.median_fields(runs) == {"t": 2.0, "n": 2, "name": "a"}
    with pytest.raises(ValueError, match="at least one run"):
        common.median_fields([])

    table = common.markdown_table(["a", "b"], [[1.23456, "x"]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1.23 | x |"]
    with pytest.raises(ValueError, match="2 cells, the header 1"):
        common.markdown_table(["a"], [[1, 2]])

    machine = {"cpu": "AMD EPYC 7R13 Processor", "usable_cores": 2}
    assert common.machine_slug(machine) == "amd-epyc-7r13-2cpu"
    first = common.write_results("a", {"x": 1}, machine, tmp_path, date="2026-01-02")
    second = common.write_results("b", {"y": 2}, machine, tmp_path, date="2026-01-02")
    assert first == second == tmp_path / "amd-epyc-7r13-2cpu-2026-01-02.json"
    assert common.read_results(first) == {
        "a": {"x": 1, "machine": machine},
        "b": {"y": 2, "machine": machine},
    }

    readme = tmp_path / "README.md"
    readme.write_text("before\n")
    common.update_readme("s", "one", readme)
    common.update_readme("s", "two", readme)
    readme.write_text(readme.read_text() + "after\n")
    common.update_readme("s", "three", readme)
    assert readme.read_text() == "before\n\n<!-- s:begin -->\nthree\n<!-- s:end -->\nafter\n"


def _describe_machine(data: dict) -> str:
    """A stand-in renderer: the machine facts the real ones print."""
    machine = data["machine"]
    return f"{data['date']}: {machine['cpu']}, {machine['threads']} thread(s), {data['rows']}"


def test_each_section_renders_with_the_machine_info_it_was_measured_with(tmp_path):
    """Two benchmarks of one results file, measured with different thread counts and package
    versions: each table names its own, whichever was written last."""
    one = {"cpu": "AMD EPYC", "usable_cores": 2, "threads": 1, "packages": {"torch": "2.14.1"}}
    two = {**one, "threads": 2, "packages": {"torch": "2.15.0"}}
    path = common.write_results("first", {"rows": "a"}, one, tmp_path, date="2026-01-02")
    assert common.write_results("second", {"rows": "b"}, two, tmp_path, date="2026-01-02") == path
    stored = json.loads(path.read_text())
    assert "machine" not in stored  # only the sections know theirs
    assert stored["benchmarks"]["first"]["machine"] == one
    assert stored["benchmarks"]["second"]["machine"] == two

    readme = tmp_path / "README.md"
    first = common.render_stored("first", _describe_machine, path, readme)
    second = common.render_stored("second", _describe_machine, path, readme)
    assert first["machine"] == one and second["machine"] == two
    text = readme.read_text()
    assert "<!-- first:begin -->\n2026-01-02: AMD EPYC, 1 thread(s), a\n<!-- first:end -->" in text
    assert (
        "<!-- second:begin -->\n2026-01-02: AMD EPYC, 2 thread(s), b\n<!-- second:end -->" in text
    )

    # Rendering again from the file gives the same README.
    common.render_stored("first", _describe_machine, path, readme)
    assert readme.read_text() == text


def test_results_files_with_one_machine_for_the_whole_file_still_render(tmp_path):
    """Files written before sections had their own machine info: the file's is used for sections
    without one, a section's own wins, and adding a section keeps the file's for the old ones."""
    old = {"cpu": "AMD EPYC", "usable_cores": 2, "threads": 2}
    new = {**old, "threads": 1}
    path = common.results_path(old, tmp_path, date="2026-01-02")
    stored = {"machine": old, "date": "2026-01-02", "benchmarks": {"old": {"rows": "a"}}}
    path.write_text(json.dumps(stored, indent=2) + "\n")
    common.write_results("new", {"rows": "b"}, new, tmp_path, date="2026-01-02")

    readme = tmp_path / "README.md"
    assert common.render_stored("old", _describe_machine, path, readme)["machine"] == old
    assert common.render_stored("new", _describe_machine, path, readme)["machine"] == new
    assert "2026-01-02: AMD EPYC, 2 thread(s), a" in readme.read_text()
    assert "2026-01-02: AMD EPYC, 1 thread(s), b" in readme.read_text()

    with pytest.raises(ValueError, match=r"no 'missing' results \(it holds: old, new\)"):
        common.render_stored("missing", _describe_machine, path, readme)


@pytest.mark.parametrize(
    "script", [bench_loading, bench_unet, bench_gpu], ids=["loading", "unet", "gpu"]
)
def test_render_only_of_a_file_without_the_section_is_one_line_and_exit_code_2(
    script, tmp_path, capsys
):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"date": "2026-01-02", "benchmarks": {"other": {}}}) + "\n")
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--render-only", str(path), "--readme", str(tmp_path / "README.md")])
    assert exit_info.value.code == 2
    assert "holds no" in capsys.readouterr().err and not (tmp_path / "README.md").exists()


# ---- bench_unet ----------------------------------------------------------------------------------

# Whole tiny UNet in float32 against diffusers, as max |a - b| / max |b|: round-off through the
# network (the bound of the UNet parity tests, tests/test_unet_fast.py).
UNET_RTOL = 1e-5
TINY_SHAPE = {"preset": "tiny", "height": 8, "width": 8, "batch": 2, "frames": 3}


def test_bench_unet_measurements_at_tiny_size(tmp_path):
    outputs = {lib: str(tmp_path / f"{lib}.pt") for lib in bench_unet.LIBRARIES}
    for library, output in outputs.items():
        measured = bench_unet.measure_forward(library, **TINY_SHAPE, warmup=1, output=output)
        assert set(measured) == {"seconds", "build_s", "warmup_s", "threads"}
        assert measured["seconds"] > 0 and measured["threads"] == torch.get_num_threads()
    saved = torch.load(outputs["svd_core"])
    assert saved.shape == (2, 3, SVDConfig.tiny().unet.out_channels, 8, 8)
    error = bench_unet.output_error(outputs["svd_core"], outputs["diffusers"])
    print(f"\ntiny UNet, svd_core vs diffusers: {error}")
    assert 0 <= error["relative"] < UNET_RTOL
    assert error["max_abs"] == pytest.approx(
        (saved.double() - torch.load(outputs["diffusers"]).double()).abs().max().item()
    )

    flops = {lib: bench_unet.measure_flops(lib, **TINY_SHAPE)["flops"] for lib in outputs}
    # svd_core skips the queries and keys of attention to one token: strictly less work.
    assert 0 < flops["svd_core"] < flops["diffusers"]
    peak = bench_unet.measure_matmul_peak(size=64, repeats=2)
    assert peak["size"] == 64 and peak["gflops"] > 0


def test_bench_unet_rejects_bad_names_and_sizes():
    with pytest.raises(ValueError, match="library must be one of"):
        bench_unet.measure_forward("jax", **TINY_SHAPE)
    with pytest.raises(ValueError, match="preset must be one of"):
        bench_unet.unet_config("svd_huge")
    assert bench_unet.parse_latent(" 40x72 ") == (40, 72)
    for text in ("40", "40x", "0x8", "axb"):
        with pytest.raises(ValueError, match="HEIGHTxWIDTH in latent pixels"):
            bench_unet.parse_latent(text)


def test_bench_unet_end_to_end_writes_results_and_the_readme_table(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# benchmarks\n\nIntro that must stay.\n")
    argv = ["--preset", "tiny", "--latent", "8x8", "--batch", "2", "--frames", "3", "--runs", "1",
            "--warmup", "0", "--threads", "1", "--peak-size", "64", "--results-dir",
            str(tmp_path / "results"), "--readme", str(readme), "--machine", "testbox"]  # fmt: skip
    data = bench_unet.main(argv)

    row = data["rows"]["8x8"]
    assert row["command"] == (
        "python benchmarks/bench_unet.py --latent 8x8 --runs 1 --warmup 0 --threads 1 --frames 3 "
        "--preset tiny"
    )
    for library in bench_unet.LIBRARIES:
        side = row[library]
        assert len(side["runs"]) == 1 and side["seconds"] == side["runs"][0]["seconds"] > 0
        assert side["flops"] > 0
        assert side["fraction_of_peak"] == pytest.approx(
            side["flops"] / side["seconds"] / 1e9 / data["peak"]["gflops"]
        )
    assert row["speedup"] == row["diffusers"]["seconds"] / row["svd_core"]["seconds"]
    assert row["error"]["relative"] < UNET_RTOL
    peak = data["peak"]
    assert peak["gflops"] == max(peak["before"]["gflops"], peak["after"]["gflops"])

    [results] = (tmp_path / "results").glob("testbox-*.json")
    stored = json.loads(results.read_text())
    assert stored["benchmarks"]["unet_forward"]["machine"]["threads"] == 1
    assert set(stored["benchmarks"]["unet_forward"]["rows"]) == {"8x8"}

    text = readme.read_text()
    assert text.startswith("# benchmarks\n\nIntro that must stay.\n")
    assert "<!-- unet_forward:begin -->" in text and "<!-- unet_forward:end -->" in text
    [table_row] = [line for line in text.splitlines() if line.startswith("| 8x8 |")]
    assert f"`{row['command']}`" in table_row

    again = tmp_path / "again.md"
    bench_unet.main(["--render-only", str(results), "--readme", str(again)])
    section = text[text.index("<!-- unet_forward:begin -->") :]
    assert again.read_text().strip() == section.strip()


# ---- bench_gpu -----------------------------------------------------------------------------------

# Frames in [0, 1] after a whole float32 run of the same random weights, svd_core with
# numerics="diffusers" against diffusers with its res-block eps at the official 1e-5: round-off
# only. The bound of the end-to-end parity test with diffusers (tests/test_pipeline.py, PARITY_ATOL).
PIPELINE_PARITY_ATOL = 5e-5
GPU_VARIANTS = [
    f"{library}-float32-{mode}" for library in ("diffusers", "svd_core") for mode in bench_gpu.MODES
]


def test_bench_gpu_on_the_cpu_writes_results_and_the_readme_table(cache, tmp_path, monkeypatch):
    """Every variant's process at tiny size on the CPU (float32: half precision on a CPU is slow
    or unsupported). The compiled mode runs with dynamo disabled (TORCH_COMPILE_DISABLE, inherited
    by the measurement processes): its wiring (the UNet wrapped by torch.compile, the warm-up
    video, the graph counter) is what is checked here; tracing both libraries' tiny UNets would add
    tens of seconds, and tests/test_compile.py checks svd_core's compiled graphs."""
    monkeypatch.setenv("TORCH_COMPILE_DISABLE", "1")
    readme = tmp_path / "README.md"
    readme.write_text("# benchmarks\n\nIntro that must stay.\n")
    argv = ["--device", "cpu", "--preset", "tiny", "--cache", str(cache), "--height", "64",
            "--width", "64", "--frames", "3", "--steps", "2", "--decode-chunk", "3",
            "--dtypes", "float32", "--modes", "eager", "compiled", "--compile-backend", "eager",
            "--runs", "1", "--warmup", "0", "--threads", "1",
            "--results-dir", str(tmp_path / "results"), "--readme", str(readme),
            "--machine", "testbox"]  # fmt: skip
    data = bench_gpu.main(argv)

    rows = data["rows"]
    assert sorted(rows) == sorted(GPU_VARIANTS)
    for name, row in rows.items():
        assert len(row["runs"]) == 1 and row["video_s"] == row["runs"][0]["video_s"] > 0
        assert row["load_s"] > 0 and row["warmup_s"] > 0 and row["peak_rss_bytes"] > 0
        assert row["device_name"] == "cpu"
        for field in ("gpu_weights_bytes", "gpu_peak_allocated_bytes", "gpu_peak_reserved_bytes"):
            assert row[field] is None, (name, field)
        assert "ratio_tensorrt" not in row  # not the TensorRT figure's settings
        compiled = row["mode"] == "compiled"
        assert row["graphs_compiled_in_timed_video"] == (0 if compiled else None)
    for mode in bench_gpu.MODES:
        ours, theirs = rows[f"svd_core-float32-{mode}"], rows[f"diffusers-float32-{mode}"]
        assert ours["ratio_video_s"] == ours["video_s"] / theirs["video_s"]
        assert ours["ratio_peak_rss"] == ours["peak_rss_bytes"] / theirs["peak_rss_bytes"]
        assert "ratio_gpu_peak_allocated" not in ours
        assert 0 <= ours["max_abs_error"] < PIPELINE_PARITY_ATOL
        assert "max_abs_error" not in theirs and "ratio_video_s" not in theirs
    command = rows["svd_core-float32-compiled"]["command"]
    assert command == (
        "python benchmarks/bench_gpu.py --libraries diffusers svd_core --dtypes float32 "
        "--modes compiled --runs 1 --warmup 0 --threads 1 --device cpu --height 64 --width 64 "
        "--frames 3 --steps 2 --decode-chunk 3 --compile-backend eager --preset tiny"
    )

    [results] = (tmp_path / "results").glob("testbox-*.json")
    stored = json.loads(results.read_text())["benchmarks"]["gpu"]
    assert sorted(stored["rows"]) == sorted(GPU_VARIANTS)
    assert stored["gpu"] is None and stored["device"] == "cpu" and stored["machine"]["threads"] == 1
    assert stored["tensorrt_h100_s"] == bench_gpu.TENSORRT_H100_S

    text = readme.read_text()
    assert text.startswith("# benchmarks\n\nIntro that must stay.\n")
    assert "<!-- gpu:begin -->" in text and "<!-- gpu:end -->" in text
    [line] = [row for row in text.splitlines() if row.startswith("| svd_core-float32-compiled |")]
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    assert len(cells) == 12 and cells[-1] == f"`{command}`"
    assert cells[4] == cells[5] == "-" and cells[10] == "-"  # no GPU memory, no TensorRT ratio
    assert cells[8].endswith("(RSS)")  # the memory ratio falls back to resident memory

    again = tmp_path / "again.md"
    bench_gpu.main(["--render-only", str(results), "--readme", str(again)])
    section = text[text.index("<!-- gpu:begin -->") :]
    assert again.read_text().strip() == section.strip()


def test_bench_gpu_renders_gpu_memory_and_the_tensorrt_ratio():
    """A GPU row as a CUDA run stores it: GiB, ratios and the TensorRT column (made-up numbers)."""
    gpu_row = {"gpu_weights_bytes": 2**30, "gpu_peak_allocated_bytes": 3 * 2**30,
               "gpu_peak_reserved_bytes": 4 * 2**30, "peak_rss_bytes": 2**31, "load_s": 5.0,
               "warmup_s": 70.0, "video_s": 45.2, "runs": [], "command": "c",
               "graphs_compiled_in_timed_video": 0}  # fmt: skip
    ours = {**gpu_row, "variant": "svd_core-float16-compiled", "ratio_video_s": 0.5}
    ours.update(ratio_gpu_peak_allocated=0.75, max_abs_error=0.01, ratio_tensorrt=2.0)
    theirs = {**gpu_row, "variant": "diffusers-float16-compiled", "ratio_tensorrt": 4.0}
    machine = {"cpu": "Xeon", "usable_cores": 16, "threads": 4}
    machine["packages"] = {"torch": "2.14.1", "diffusers": "0.42.1"}
    data = {"rows": {"a": ours, "b": theirs}, "machine": machine, "date": "2026-01-02"}
    data.update(preset="svd_xt", height=576, width=1024, frames=25, steps=25, decode_chunk=8)
    data.update(warmup_videos=1, compile_mode="default", compile_backend="inductor")
    data["gpu"] = {"name": "NVIDIA H100 80GB HBM3", "memory_gib": 79.2, "cuda": "13.0"}
    text = bench_gpu.render(data)
    assert "NVIDIA H100 80GB HBM3 (79.2 GiB), CUDA 13.0" in text and "mode default" in text
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert lines[1].startswith("| diffusers-float16-compiled |")  # diffusers first, then ours
    cells = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert cells[:6] == ["svd_core-float16-compiled", "5", "24.8", "45.2", "3", "4"]
    assert cells[6:11] == ["2", "0.5", "0.75", "0.01", "2"]
    assert "Recompiled" not in text
    ours["graphs_compiled_in_timed_video"] = 2
    assert "Recompiled during the timed video" in bench_gpu.render(data)
    settings = {"preset": "svd_xt", "height": 576, "width": 1024, "frames": 25}
    assert bench_gpu.compares_with_tensorrt(settings)
    assert not bench_gpu.compares_with_tensorrt({**settings, "frames": 14})


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_bench_gpu_without_cuda_is_one_line_and_exit_code_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_gpu.main(["--cache", str(tmp_path), "--results-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--device cuda asked, but this machine has no usable CUDA device" in error
    assert "--device cpu" in error and not list(tmp_path.iterdir())  # nothing measured or written


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--runs", "0"], "need --runs >= 1"),
        (["--warmup", "-1"], "need --runs >= 1"),
        (["--height", "100"], "multiples of 64, got 100x1024"),
        (["--width", "0"], "multiples of 64, got 576x0"),
        (["--frames", "0"], "need --frames, --steps and --decode-chunk >= 1"),
        (["--warmup-videos", "0"], "--modes compiled needs --warmup-videos >= 1"),
        (["--device", "tpu"], "--device must be cuda, cuda:N or cpu, got 'tpu'"),
        (["--dtypes", "int8"], "invalid choice: 'int8'"),
    ],
)
def test_bench_gpu_refuses_nonsense_with_one_line_and_exit_code_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_gpu.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bench_gpu_measure_rejects_unknown_names_and_a_compiled_run_without_warm_up():
    with pytest.raises(ValueError, match="library must be one of"):
        bench_gpu.measure("onnx", "float16", "eager", "nowhere")
    with pytest.raises(ValueError, match="dtype must be one of"):
        bench_gpu.measure("svd_core", "int8", "eager", "nowhere")
    with pytest.raises(ValueError, match="mode must be one of"):
        bench_gpu.measure("svd_core", "float16", "jit", "nowhere")
    with pytest.raises(ValueError, match="compiled mode needs warmup_videos >= 1"):
        bench_gpu.measure("svd_core", "float16", "compiled", "nowhere", warmup_videos=0)
    image = bench_gpu.make_image(64, 128, seed=1)
    assert image.size == (128, 64) and image.mode == "RGB"
    assert image.tobytes() == bench_gpu.make_image(64, 128, seed=1).tobytes()
    assert bench_gpu.weight_dtype("bfloat16") == "float16"
