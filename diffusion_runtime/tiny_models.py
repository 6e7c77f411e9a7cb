"""Tiny, randomly initialised models of the real classes, built offline and cached on disk.

Why: this machine has no model hub, yet tests and the default served models need folders that the real
loaders accept (``DiffusionPipeline.from_pretrained``, SGLang's ``DiffGenerator``,
``AutoModelForMaskedLM``). So every folder here is produced by instantiating the real classes with tiny
configs, seeding torch before each component so two builds are byte-identical, and ``save_pretrained``.
Their shapes come from ``model_shapes``; their tokenizers are trained locally (``tiny_tokenizers``), because no
pretrained vocabulary can be downloaded.

Models:

- ``tiny-flux``: ``FluxPipeline``. The shapes that SGLang's native FLUX path relies on are kept real: a
  16-channel VAE latent with 4 VAE levels (scale factor 8, so sizes are multiples of 16), transformer
  ``in_channels=64`` (2x2-packed latents), guidance embedding (FLUX.1-dev), and the FLUX.1-dev scheduler.
- ``tiny-wan-t2v`` / ``tiny-wan-i2v``: ``WanPipeline`` / ``WanImageToVideoPipeline`` with the Wan2.1
  layout (16-channel latents, 4x temporal / 8x spatial VAE, UniPC flow scheduler with ``flow_shift``). The
  I2V transformer takes 36 input channels and CLIP-vision image tokens through added K/V projections, as
  Wan2.1-I2V does; its text length must stay 512 because the transformer splits image from text tokens by
  that length.
- ``tiny-llada``: ``ModernBertForMaskedLM``. LLaDA is a bidirectional (non-causal) Llama-style transformer
  with rotary positions and a gated MLP trained to predict masked tokens. ModernBERT is the masked LM in
  transformers closest to that: rotary positions, gated (GeGLU) MLP, pre-norm, no biases, and it loads
  through ``AutoModelForMaskedLM`` with no remote code. All its layers are set to global attention
  (ModernBERT's sliding-window layers have no LLaDA counterpart). BERT would also work but uses learned
  absolute positions, which LLaDA does not have. The tokenizer has LLaDA's special tokens (``<|mdm_mask|>``,
  ``<|eot_id|>`` as eos, ...) and a LLaDA-style (Llama-3) chat template.

Every build happens in a temporary folder next to the target, under an ``fcntl`` lock, and is renamed
into place only when complete; a stamp file records the builder and library versions so an upgrade
rebuilds stale folders.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from diffusion_runtime import model_shapes as shapes
from diffusion_runtime import tiny_tokenizers as tokenizers

# Bump when any builder changes what it writes.
BUILDER_VERSION = "3"

TINY_MODELS: tuple[str, ...] = ("tiny-flux", "tiny-wan-t2v", "tiny-wan-i2v", "tiny-llada")

STAMP_FILE = ".tiny-model-stamp.json"
SEED = 0

# The libraries whose versions can change the bytes written; part of the stamp.
_STAMPED_PACKAGES = ("torch", "diffusers", "transformers", "tokenizers", "safetensors")

# --------------------------------------------------------------------------------------------- public API


def default_cache_dir() -> Path:
    """``$TD_HOME/tiny-models`` if ``TD_HOME`` is set, else ``~/.cache/triton-diffusion/tiny-models``."""
    home = os.environ.get("TD_HOME")
    base = Path(home) if home else Path.home() / ".cache" / "triton-diffusion"
    return base / "tiny-models"


def ensure_tiny_models(
    root: Path | str | None = None, names: Iterable[str] = TINY_MODELS, *, force: bool = False
) -> dict[str, Path]:
    """Build whichever of ``names`` is missing or stale under ``root``; return name -> folder."""
    return {name: ensure_tiny_model(name, root, force=force) for name in names}


def ensure_tiny_model(name: str, root: Path | str | None = None, *, force: bool = False) -> Path:
    """Return the folder of tiny model ``name``, building it first if missing or stale.

    Safe against concurrent callers (in threads or processes): the check-and-build runs under an exclusive
    ``fcntl`` lock per model, and a folder only appears, complete, by rename.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown tiny model {name!r}; known: {', '.join(TINY_MODELS)}")
    root = Path(root) if root is not None else default_cache_dir()
    target = root / name
    if not force and _is_current(target, name):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{name}.lock"):
        if force or not _is_current(target, name):
            _build_atomically(name, target)
    return target


# ------------------------------------------------------------------------------------- cache machinery


def _stamp(name: str) -> dict[str, Any]:
    versions = {}
    for pkg in _STAMPED_PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"name": name, "builder_version": BUILDER_VERSION, "seed": SEED, "versions": versions}


def _is_current(folder: Path, name: str) -> bool:
    try:
        return json.loads((folder / STAMP_FILE).read_text()) == _stamp(name)
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build_atomically(name: str, target: Path) -> None:
    """Build into a sibling temp dir (same filesystem, so rename is atomic), then swap it in."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.build-", dir=target.parent))
    try:
        with _offline_hub(), _quiet_progress_bars():
            _BUILDERS[name](tmp)
        (tmp / STAMP_FILE).write_text(json.dumps(_stamp(name), indent=2, sort_keys=True) + "\n")
        _make_world_readable(tmp)
        if target.exists():
            # A non-empty directory cannot be replaced by rename: move the stale one aside first.
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=target.parent))
            target.rename(old / name)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _make_world_readable(folder: Path) -> None:
    """mkdtemp makes the folder 0700 and some writers leave files 0600; servers may run as other users."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


@contextlib.contextmanager
def _offline_hub() -> Iterator[None]:
    """Forbid hub access while building, and keep any hub cache writes in a throwaway dir.

    huggingface_hub reads these variables at import time, so the already-imported constant is patched
    too; both are restored afterwards so the caller's process is left as it was.
    """
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_HOME")}
    hub_constants = sys.modules.get("huggingface_hub.constants")
    saved_const = getattr(hub_constants, "HF_HUB_OFFLINE", None)
    with tempfile.TemporaryDirectory(prefix="tiny-models-hf-home-") as hf_home:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_HOME"] = hf_home
        if hub_constants is not None:
            hub_constants.HF_HUB_OFFLINE = True
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            if hub_constants is not None:
                hub_constants.HF_HUB_OFFLINE = saved_const


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """``save_pretrained`` draws a progress bar per shard; a build should print only its result."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _seeded(offset: int) -> None:
    """Seed torch before each component so its weights do not depend on what was built before it."""
    import torch

    torch.manual_seed(SEED + offset)


# ------------------------------------------------------------------------------------ shared components


def _wan_vae() -> Any:
    from diffusers import AutoencoderKLWan

    _seeded(10)
    return AutoencoderKLWan(**shapes.TINY_WAN_VAE)


def _wan_text_encoder_and_tokenizer() -> tuple[Any, Any]:
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = tokenizers.train_t5_tokenizer(model_max_length=512)
    _seeded(11)
    text_encoder = UMT5EncoderModel(UMT5Config(**shapes.t5_encoder_kwargs(len(tokenizer), shapes.TINY_T5)))
    return text_encoder, tokenizer


def _wan_transformer(*, image_to_video: bool) -> Any:
    from diffusers import WanTransformer3DModel

    _seeded(12)
    return WanTransformer3DModel(**(shapes.TINY_WAN_I2V if image_to_video else shapes.TINY_WAN))


# ------------------------------------------------------------------------------------------- builders


def build_tiny_flux(out: Path) -> None:
    """FluxPipeline (FLUX.1-dev layout) with two trained tokenizers and tiny random components."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    tokenizer = tokenizers.train_clip_tokenizer()
    tokenizer_2 = tokenizers.train_t5_tokenizer(model_max_length=512)

    _seeded(1)
    text_encoder = CLIPTextModel(shapes.clip_text_config(tokenizer, shapes.TINY_CLIP))
    _seeded(2)
    text_encoder_2 = T5EncoderModel(T5Config(**shapes.t5_encoder_kwargs(len(tokenizer_2), shapes.TINY_T5)))
    _seeded(3)
    transformer = FluxTransformer2DModel(**shapes.TINY_FLUX_TRANSFORMER)
    _seeded(4)
    vae = AutoencoderKL(**shapes.TINY_FLUX_VAE)
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipe.save_pretrained(out)


def build_tiny_wan_t2v(out: Path) -> None:
    """WanPipeline (Wan2.1 T2V layout)."""
    from diffusers import WanPipeline

    text_encoder, tokenizer = _wan_text_encoder_and_tokenizer()
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=_wan_vae(),
        scheduler=shapes.wan_scheduler(),
        transformer=_wan_transformer(image_to_video=False),
    )
    pipe.save_pretrained(out)


def build_tiny_wan_i2v(out: Path) -> None:
    """WanImageToVideoPipeline (Wan2.1 I2V layout: CLIP vision tokens feed the transformer)."""
    from diffusers import WanImageToVideoPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    text_encoder, tokenizer = _wan_text_encoder_and_tokenizer()
    _seeded(20)
    image_encoder = CLIPVisionModel(CLIPVisionConfig(**shapes.TINY_CLIP_VISION))
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_center_crop=True
    )
    pipe = WanImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=_wan_vae(),
        scheduler=shapes.wan_scheduler(),
        image_processor=image_processor,
        image_encoder=image_encoder,
        transformer=_wan_transformer(image_to_video=True),
    )
    pipe.save_pretrained(out)


def build_tiny_llada(out: Path) -> None:
    """A masked diffusion LM stand-in: ModernBertForMaskedLM (see module docstring for why)."""
    from transformers import ModernBertForMaskedLM

    tokenizer = tokenizers.train_llada_tokenizer()
    config = shapes.masked_lm_config(tokenizer, shapes.TINY_MLM)
    _seeded(30)
    model = ModernBertForMaskedLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


_BUILDERS: dict[str, Callable[[Path], None]] = {
    "tiny-flux": build_tiny_flux,
    "tiny-wan-t2v": build_tiny_wan_t2v,
    "tiny-wan-i2v": build_tiny_wan_i2v,
    "tiny-llada": build_tiny_llada,
}


# ------------------------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(TINY_MODELS)} (default: all)")
    parser.add_argument("--out", type=Path, default=None, help=f"root folder (default: {default_cache_dir()})")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(TINY_MODELS))
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)}")
    for name, path in ensure_tiny_models(args.out, args.names or TINY_MODELS, force=args.force).items():
        print(f"{name}\t{path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
