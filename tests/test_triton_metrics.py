"""How Triton's Prometheus text appears on the frontend's ``/metrics``: names as Triton gives them, values intact,
and with several servers one family per name whose samples say which server they came from (the end-to-end
checks are in ``test_images_api`` and ``test_multi_triton``)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from openai_frontend.triton.metrics import exposition, merge_families
from tests.conftest import metric_value

# Triton 2.51's own counters carry no ``_total``; the models' custom counters do.
TRITON_TEXT = """# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="image_diffusion",version="1"} 3
# HELP diffusion_requests_total Generation requests by outcome
# TYPE diffusion_requests_total counter
diffusion_requests_total{model="image_diffusion",outcome="success"} 2
# HELP nv_gpu_utilization GPU utilization rate [0.0 - 1.0)
# TYPE nv_gpu_utilization gauge
nv_gpu_utilization{gpu_uuid="GPU-0"} 0.25
"""


def test_one_server_keeps_triton_names_and_values() -> None:
    text = exposition(merge_families([("a:8001", TRITON_TEXT)], label_servers=False))
    assert metric_value(text, "nv_inference_request_success", model="image_diffusion") == 3
    assert 'diffusion_requests_total{model="image_diffusion",outcome="success"} 2.0' in text
    assert metric_value(text, "nv_gpu_utilization", gpu_uuid="GPU-0") == 0.25
    assert "triton=" not in text
    assert "nv_inference_request_success_total" not in text, "Triton's names are what its dashboards query"


def test_several_servers_give_one_family_each_with_a_server_label() -> None:
    other = TRITON_TEXT.replace("} 3", "} 5")
    text = exposition(merge_families([("a:8001", TRITON_TEXT), ("b:8001", other)], label_servers=True))
    assert metric_value(text, "nv_inference_request_success", model="image_diffusion", triton="a:8001") == 3
    assert metric_value(text, "nv_inference_request_success", model="image_diffusion", triton="b:8001") == 5
    assert text.count("# TYPE diffusion_requests_total counter") == 1
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert [s.labels["triton"] for s in families["diffusion_requests"].samples] == ["a:8001", "b:8001"]


def test_a_server_whose_text_does_not_parse_is_left_out() -> None:
    text = exposition(merge_families([("a:8001", "not{ metrics"), ("b:8001", TRITON_TEXT)], label_servers=True))
    assert metric_value(text, "diffusion_requests_total", triton="b:8001") == 2
    assert "a:8001" not in text
