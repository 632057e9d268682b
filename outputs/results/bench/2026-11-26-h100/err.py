import torch
from tests.test_gpu import _attention_step, KINDS, DTYPES
for length in (128, 1024):
    want = _attention_step("scratch", torch.float32, length)
    for kind in KINDS:
        for dtype in DTYPES:
            got = _attention_step(kind, dtype, length)
            errs = [float((g - w).abs().max() / w.abs().max()) for g, w in zip(got, want)]
            print(length, kind, dtype, " ".join(f"{e:.2e}" for e in errs), flush=True)
