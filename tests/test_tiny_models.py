"""The tiny offline models load with their real classes, generate the right shapes, and build reproducibly."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

# huggingface_hub reads this at import time: set it before anything imports it.
os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_runtime import tiny_models
from diffusion_runtime.tiny_models import STAMP_FILE, TINY_MODELS, ensure_tiny_model, ensure_tiny_models

MAX_FOLDER_BYTES = 3 * 1024 * 1024
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-models")
    ensure_tiny_models(root)
    return root


@pytest.fixture(scope="session")
def tiny(tiny_root: Path) -> dict[str, Path]:
    return ensure_tiny_models(tiny_root)


def _file_digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) of every file: a rebuild or a rewrite changes one of them."""
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.rglob("*")}


# ------------------------------------------------------------------------------------------ cache layer


def test_builds_every_model_small_and_stamped(tiny: dict[str, Path], tiny_root: Path) -> None:
    assert tuple(tiny) == TINY_MODELS
    for name, folder in tiny.items():
        assert folder == tiny_root / name and folder.is_dir()
        assert (folder / STAMP_FILE).is_file()
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        assert size < MAX_FOLDER_BYTES, (name, size)
    # No temporary build folders are left behind.
    assert sorted(p.name for p in tiny_root.iterdir() if p.is_dir()) == sorted(TINY_MODELS)


def test_second_call_does_not_rebuild(tiny: dict[str, Path], tiny_root: Path) -> None:
    before = {name: _snapshot(folder) for name, folder in tiny.items()}
    again = ensure_tiny_models(tiny_root)
    assert again == tiny
    assert {name: _snapshot(folder) for name, folder in again.items()} == before


def test_build_is_deterministic(tiny: dict[str, Path], tmp_path: Path) -> None:
    other = ensure_tiny_models(tmp_path)
    for name in TINY_MODELS:
        first, second = _file_digests(tiny[name]), _file_digests(other[name])
        assert any(f.endswith(".safetensors") for f in first), name
        assert first == second, name


def test_stale_stamp_triggers_rebuild(tmp_path: Path) -> None:
    folder = ensure_tiny_model("tiny-llada", tmp_path)
    digests = _file_digests(folder)
    (folder / STAMP_FILE).write_text('{"builder_version": "old"}')
    (folder / "leftover.txt").write_text("from the stale build")
    rebuilt = ensure_tiny_model("tiny-llada", tmp_path)
    assert rebuilt == folder
    assert _file_digests(rebuilt) == digests  # the stale folder was replaced as a whole


def test_force_rebuilds(tmp_path: Path) -> None:
    folder = ensure_tiny_model("tiny-llada", tmp_path)
    stamp_inode = (folder / STAMP_FILE).stat().st_ino
    ensure_tiny_model("tiny-llada", tmp_path, force=True)
    assert (folder / STAMP_FILE).stat().st_ino != stamp_inode


@pytest.mark.e2e  # runs two builder processes at once
def test_concurrent_builders_agree(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "diffusion_runtime.tiny_models", "--out", str(tmp_path), "tiny-llada"]
    procs = [
        subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert out.strip() == f"tiny-llada\t{tmp_path / 'tiny-llada'}"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["tiny-llada"]
    assert tiny_models._is_current(tmp_path / "tiny-llada", "tiny-llada")


def test_unknown_name_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown tiny model"):
        ensure_tiny_model("tiny-nothing", tmp_path)
    with pytest.raises(SystemExit) as exc:
        tiny_models.main(["--out", str(tmp_path), "tiny-nothing"])
    assert exc.value.code == 2


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TD_HOME", str(tmp_path))
    assert tiny_models.default_cache_dir() == tmp_path / "tiny-models"
    monkeypatch.delenv("TD_HOME")
    assert tiny_models.default_cache_dir() == Path.home() / ".cache" / "triton-diffusion" / "tiny-models"


# ------------------------------------------------------------------------------------- real pipelines


def test_flux_generates_square_and_non_square(tiny: dict[str, Path]) -> None:
    from diffusers import DiffusionPipeline, FluxPipeline

    pipe = DiffusionPipeline.from_pretrained(tiny["tiny-flux"], torch_dtype=torch.float32)
    assert isinstance(pipe, FluxPipeline)
    assert pipe.vae.config.latent_channels == 16 and pipe.transformer.config.in_channels == 64
    for height, width in ((64, 64), (64, 96)):
        images = pipe(
            "a photo of a cat",
            height=height,
            width=width,
            num_inference_steps=2,
            guidance_scale=3.5,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        ).images
        assert images.shape == (1, height, width, 3)
        assert np.isfinite(images).all()


def test_wan_t2v_generates_nine_frames(tiny: dict[str, Path]) -> None:
    from diffusers import DiffusionPipeline, WanPipeline

    pipe = DiffusionPipeline.from_pretrained(tiny["tiny-wan-t2v"], torch_dtype=torch.float32)
    assert isinstance(pipe, WanPipeline)
    frames = pipe(
        "a cat walking",
        height=64,
        width=64,
        num_frames=9,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).frames
    assert frames.shape == (1, 9, 64, 64, 3)
    assert np.isfinite(frames).all()


def test_wan_i2v_generates_nine_frames_from_an_image(tiny: dict[str, Path]) -> None:
    from diffusers import DiffusionPipeline, WanImageToVideoPipeline

    pipe = DiffusionPipeline.from_pretrained(tiny["tiny-wan-i2v"], torch_dtype=torch.float32)
    assert isinstance(pipe, WanImageToVideoPipeline)
    assert pipe.image_encoder is not None and pipe.image_processor is not None
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8))
    frames = pipe(
        image=image,
        prompt="the cat turns its head",
        height=64,
        width=64,
        num_frames=9,
        num_inference_steps=2,
        max_sequence_length=512,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).frames
    assert frames.shape == (1, 9, 64, 64, 3)
    assert np.isfinite(frames).all()


def test_llada_masked_lm_and_tokenizer(tiny: dict[str, Path]) -> None:
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    folder = tiny["tiny-llada"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForMaskedLM.from_pretrained(folder)
    ids = {tokenizer.mask_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    assert None not in ids and len(ids) == 3
    assert tokenizer.chat_template

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert "What is the capital of France?" in prompt
    assert prompt.endswith("assistant<|end_header_id|>\n\n")
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    assert tokenizer.decode(prompt_ids) == prompt  # byte-level: nothing is lost to unknown tokens

    input_ids = torch.tensor([prompt_ids + [tokenizer.mask_token_id] * 8])
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits
    assert logits.shape == (1, input_ids.shape[1], model.config.vocab_size)
    assert model.config.vocab_size == len(tokenizer)
    assert torch.isfinite(logits).all()
