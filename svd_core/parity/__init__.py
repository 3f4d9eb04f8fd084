"""`svd-core parity`: does svd_core compute what diffusers computes, and where does it not?

    svd-core parity --model random:tiny --report parity.md
    svd-core parity --model svd_xt.safetensors --size 128x128 --frames 4 --device cuda
    svd-core parity --model random:tiny --numerics official --known-differences

Both implementations get the same weights (the reference through `svd_core.save(model, folder,
layout="diffusers")` and diffusers' `from_pretrained`, so an official single file works too) and
the same inputs. Six components are compared (components.py): the image encoder, the VAE encoder,
the UNet, the VAE decoder, one sampler step, and a short sampling run of both pipelines, with the
PSNR between the two videos. Inside the networks every block is compared as well: the block
correspondence comes from the key maps (blocks.py), and the report names the first block where
the error jumps (report.py defines the rule).

In Python:

    from svd_core.parity import ParityOptions, run_parity
    report = run_parity(model, ParityOptions(num_frames=4))
    report.passed; report.to_markdown(); report.save("parity.json")

numerics: "diffusers" (the default here) makes our side take diffusers' choices wherever the
official code differs (differences.py has the table, with sizes), so both sides compute the same
function and any difference left is an implementation's. "official" keeps svd_core's official
numerics; the report then contains those documented differences too (the UNet's GroupNorm eps
alone gives 1.9e-4 relative on random tiny weights, over the float32 tolerance).

Models: anything `svd_core.load` takes, or `random:PRESET`: the preset's architecture with
seeded random weights (random:tiny, random:tiny_demo, random:svd, random:svd_xt, ...; the seed is
--seed). Size: --size HxW (multiples of the VAE's factor times the UNet's: 64 for SVD, 32 for
tiny), default the model's own or 128x128 for full-size models; --frames default min(the model's,
8). A model whose VAE diffusers cannot build (tiny_demo: 8 GroupNorm groups, where diffusers'
temporal VAE fixes 32) is compared without one: `--components image_encoder,unet,sampler_step`;
asking for vae_encode, vae_decode or sampling_run is an error that says why.

Precision: --dtype sets the UNet and the image encoder of both sides. The VAE comparisons run both
VAEs in float32. The sampling run runs each pipeline as it runs: svd_core keeps its VAE and its
latents in float32, diffusers holds everything in the pipeline's dtype. --dtype float64 compares
the networks only (--components image_encoder,vae_encode,unet,vae_decode): the UNets then differ
by float64 round-off, so a difference of definition (an eps, a formula) shows undiluted.

Tolerances are relative (max |ours - ref| / max |ref|), per component and dtype
(run.DEFAULT_TOLERANCES); --tolerance overrides. Exit codes: 0 every component within its
tolerance, 1 some component beyond it, 2 bad arguments (one line on stderr).

Memory: both models are held at once, in float32 until cast (about 2 x 9 GB for svd_xt), plus a
temporary copy of the weights on disk while the reference loads.
"""

from .differences import measure_known_differences
from .reference import ReferenceUnavailableError, build_reference
from .report import Comparison, ComponentResult, KnownDifference, ParityReport
from .run import (
    COMPONENTS,
    DEFAULT_TOLERANCES,
    ParityError,
    ParityOptions,
    load_for_parity,
    random_model,
    run_parity,
)

__all__ = [
    "COMPONENTS",
    "DEFAULT_TOLERANCES",
    "Comparison",
    "ComponentResult",
    "KnownDifference",
    "ParityError",
    "ParityOptions",
    "ParityReport",
    "ReferenceUnavailableError",
    "build_reference",
    "load_for_parity",
    "measure_known_differences",
    "random_model",
    "run_parity",
]
