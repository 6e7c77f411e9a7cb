"""What each API does, apart from HTTP: resolve the model, validate, build the model's tensors, call Triton, and
hand back results. Routers parse requests, call these, and shape the responses."""
