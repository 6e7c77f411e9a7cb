"""Wire shapes of the OpenAI-compatible API, one module per resource.

Requests accept unknown fields (the OpenAI SDK's ``extra_body`` lands at the top level, and newer SDKs send
fields we ignore); range and model-specific rules are checked by ``diffusion_runtime.params``, not here.
"""
