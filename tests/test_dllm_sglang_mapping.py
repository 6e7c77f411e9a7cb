"""The SGLang text engine's mapping of our settings and requests to SGLang's arguments, and of SGLang's
streamed chunks back to ours. SGLang's diffusion-LM path needs CUDA, so no engine runs here; where sglang
imports, the argument names are checked against its own ``ServerArgs``, ``SamplingParams`` and
``GenerateReqInput`` so a rename upstream fails this test rather than a deployment."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest

from diffusion_runtime.dllm import TextEngineConfig, create_text_engine, text_engine_name
from diffusion_runtime.dllm.base import DEFAULT_CONCURRENT_REQUESTS
from diffusion_runtime.dllm.sglang_engine import (
    LoopThread,
    chunk_delta,
    engine_kwargs,
    finish_reason,
    sampling_params,
)
from diffusion_runtime.errors import EngineFailure
from diffusion_runtime.params.text import TextLimits, validate_text_params

PARAMETERS = {
    "model_path": "inclusionAI/LLaDA2.0-mini-preview",
    "engine": "sglang",
    "dtype": "bfloat16",
    "num_gpus": "2",
    "dllm_algorithm": "JointThreshold",
    "dllm_algorithm_config": "/etc/dllm/joint.yaml",
    "max_running_requests": "32",
    "sglang_args": '{"mem_fraction_static": 0.8}',
}


def test_engine_kwargs_from_config_parameters() -> None:
    config = TextEngineConfig.from_parameters(PARAMETERS, "cuda:0")
    assert engine_kwargs(config) == {
        "model_path": "inclusionAI/LLaDA2.0-mini-preview",
        "dllm_algorithm": "JointThreshold",
        "dllm_algorithm_config": "/etc/dllm/joint.yaml",
        "trust_remote_code": True,
        "tp_size": 2,
        "dtype": "bfloat16",
        "max_running_requests": 32,
        "incremental_streaming_output": True,
        "mem_fraction_static": 0.8,
    }


def test_engine_kwargs_defaults_leave_sglang_its_own_but_batch_as_many_requests_as_the_model_admits() -> None:
    """SGLang's dLLM scheduler would run one request at a time; the model admits eight by default, so SGLang is
    told eight and decodes them together."""
    config = TextEngineConfig.from_parameters({"model_path": "/m", "engine": "sglang"}, "cuda:0")
    assert engine_kwargs(config) == {
        "model_path": "/m",
        "dllm_algorithm": "LowConfidence",
        "trust_remote_code": True,
        "tp_size": 1,
        "incremental_streaming_output": True,
        "max_running_requests": DEFAULT_CONCURRENT_REQUESTS,
    }


def test_engine_choice() -> None:
    assert text_engine_name(TextEngineConfig(model_path="m", engine="auto", device="cpu")) == "transformers"
    assert text_engine_name(TextEngineConfig(model_path="m", engine="sglang", device="cpu")) == "sglang"
    with pytest.raises(ValueError, match="auto or one of"):
        create_text_engine(TextEngineConfig.from_parameters({"engine": "diffusers"}, "cpu"))
    with pytest.raises(ValueError):
        engine_kwargs(TextEngineConfig(model_path="m", sglang_args="[1]"))


def test_sampling_params_from_a_request() -> None:
    params = validate_text_params(
        TextLimits(),
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=512,
        temperature=0.7,
        seed=42,
        stop=["\n\n", "END"],
        block_length=64,  # SGLang fixes block size in its YAML; not a sampling parameter
    )
    assert sampling_params(params) == {
        "max_new_tokens": 512,
        "temperature": 0.7,
        "sampling_seed": 42,
        "stop": ["\n\n", "END"],
    }
    no_stop = validate_text_params(TextLimits(), prompt="p", max_tokens=8, seed=1)
    assert sampling_params(no_stop) == {"max_new_tokens": 8, "temperature": 0.0, "sampling_seed": 1}


def test_streamed_chunks_become_deltas() -> None:
    middle = chunk_delta({"text": "Hello", "meta_info": {"finish_reason": None, "prompt_tokens": 9}})
    assert (middle.text, middle.finish_reason) == ("Hello", None)
    last = chunk_delta(
        {
            "text": " there",
            "meta_info": {
                "finish_reason": {"type": "length", "length": 64},
                "prompt_tokens": 9,
                "completion_tokens": 64,
            },
        }
    )
    assert (last.text, last.finish_reason, last.prompt_tokens, last.completion_tokens) == (" there", "length", 9, 64)
    assert finish_reason({"finish_reason": {"type": "stop", "matched": "END"}}) == "stop"
    assert finish_reason({"finish_reason": {"type": "stop", "matched": 2}}) == "stop"
    with pytest.raises(EngineFailure, match="aborted"):
        finish_reason({"finish_reason": {"type": "abort", "message": "out of memory"}})


def test_argument_names_exist_in_sglang() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sglang.srt.managers.io_struct import GenerateReqInput
        from sglang.srt.sampling.sampling_params import SamplingParams
        from sglang.srt.server_args import ServerArgs

    config = TextEngineConfig.from_parameters({**PARAMETERS, "sglang_args": ""}, "cuda:0")
    assert set(engine_kwargs(config)) <= set(ServerArgs.__struct_fields__)
    params = validate_text_params(TextLimits(), prompt="p", stop="x")
    assert set(sampling_params(params)) <= set(SamplingParams.__struct_fields__)
    assert {"input_ids", "sampling_params", "stream", "rid"} <= {f.name for f in dataclasses.fields(GenerateReqInput)}
    from sglang.srt.entrypoints.engine import Engine
    from sglang.srt.managers.tokenizer_manager import TokenizerManager

    assert {"input_ids", "sampling_params", "stream", "rid"} <= set(inspect.signature(Engine.async_generate).parameters)
    assert "rid" in inspect.signature(TokenizerManager.abort_request).parameters


def test_requests_from_several_threads_share_one_event_loop() -> None:
    """What lets concurrent requests reach SGLang together: each thread iterates its own async stream on one
    loop. The streams wait for each other (a barrier on the loop), so they finish only if they run at once."""
    loop_thread = LoopThread(asyncio.new_event_loop())
    arrived = 0
    everyone = asyncio.Event()
    closed: list[int] = []

    async def stream(index: int):
        nonlocal arrived
        try:
            yield f"{index}:first"
            arrived += 1
            if arrived == 4:
                everyone.set()
            await asyncio.wait_for(everyone.wait(), 10)
            yield f"{index}:second"
        finally:
            closed.append(index)

    def consume(index: int) -> list[str]:
        return list(loop_thread.iterate(stream(index)))

    try:
        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(consume, range(4))) == [[f"{i}:first", f"{i}:second"] for i in range(4)]
        left = loop_thread.iterate(stream(9))
        assert next(left) == "9:first"
        left.close()  # a reader that leaves closes its stream on the loop
        assert sorted(closed) == [0, 1, 2, 3, 9]
    finally:
        loop_thread.stop()
