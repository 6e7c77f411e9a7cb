"""The tensor contract (``diffusion_runtime.contract``) and the committed configs agree, and requests follow it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from diffusion_runtime.contract import CONTRACTS, IMAGE, TEXT, VIDEO, ModelContract

REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"


def _config(contract: ModelContract) -> mc.ModelConfig:
    return text_format.Parse((REPOSITORY / contract.name / "config.pbtxt").read_text(), mc.ModelConfig())


def _declared(tensors) -> list[tuple[str, str, tuple[int, ...], bool]]:
    dtype = {value: name.removeprefix("TYPE_") for name, value in mc.DataType.items()}
    return [
        (t.name, dtype[t.data_type].replace("STRING", "BYTES"), tuple(t.dims), getattr(t, "optional", False))
        for t in tensors
    ]


@pytest.mark.parametrize("contract", CONTRACTS.values(), ids=list(CONTRACTS))
def test_the_committed_config_declares_the_contracts_tensors(contract: ModelContract) -> None:
    config = _config(contract)
    assert config.name == contract.name
    assert config.max_batch_size == contract.max_batch_size == 0, "one convention: no batch dimension"
    assert config.model_transaction_policy.decoupled == contract.decoupled
    assert _declared(config.input) == [(t.name, t.dtype, t.dims, t.optional) for t in contract.inputs]
    assert _declared(config.output) == [(t.name, t.dtype, t.dims, False) for t in contract.outputs]


def test_every_model_in_the_repository_has_a_contract() -> None:
    assert sorted(p.name for p in REPOSITORY.iterdir() if (p / "config.pbtxt").exists()) == sorted(CONTRACTS)


def test_requests_are_built_from_fields_with_the_declared_types_and_shapes() -> None:
    arrays = IMAGE.request_tensors(prompt="a fox", height=64, n=2, seed=7, negative_prompt=None, image=b"\x89PNG")
    assert set(arrays) == {"PROMPT", "HEIGHT", "NUM_IMAGES", "SEED", "INPUT_IMAGE"}, "None leaves the input out"
    assert arrays["PROMPT"].tolist() == [b"a fox"] and arrays["PROMPT"].dtype == np.object_
    assert arrays["HEIGHT"].dtype == np.int32 and arrays["SEED"].dtype == np.int64
    assert arrays["INPUT_IMAGE"].tolist() == [b"\x89PNG"]
    stop = TEXT.request_tensors(prompt="hi", stop=["\n", "END"], stream=False)
    assert stop["STOP"].tolist() == [b"\n", b"END"] and stop["STREAM"].tolist() == [False]
    assert VIDEO.request_tensors(prompt="waves", num_frames=9)["NUM_FRAMES"].shape == (1,)


def test_a_request_without_its_required_input_or_with_an_unknown_field_is_refused() -> None:
    with pytest.raises(KeyError, match="PROMPT"):
        IMAGE.request_tensors(height=64)
    with pytest.raises(KeyError, match="colour"):
        IMAGE.request_tensors(prompt="x", colour="red")
