"""CPU-time profile of the first-order check's pieces at a reduced size (process_time, 1 thread).

    OMP_NUM_THREADS=1 LDYN_CACHE=... nice -n 15 python profile_pieces.py 2 32   (n probe prompts, batch)

Run 2026-12-02 04:13-04:20 UTC on main 51388b2 (before length-sorted batches) beside a training run;
its output is profile_pieces.txt (CPU seconds are the comparable column; wall is inflated by the load).
"""
import sys
import time
import torch
from learning_dynamics.validate import first_order, factored_jvp, token_squeeze, trajectory
from learning_dynamics.validate.encode import Encoder
from learning_dynamics.validate.model import load_model
from learning_dynamics.validate.probes import build_probe_set, probe_sequences
from learning_dynamics.validate.run import _examples, _tokenize_pairs
from learning_dynamics.validate.presets import settings_for
from learning_dynamics.validate import algorithms as algos

n_probe = int(sys.argv[1]); batch = int(sys.argv[2]) if len(sys.argv) > 2 else 32
settings = settings_for("cpu")
dev = torch.device("cpu")
def T(label, fn, reps=1):
    t = time.process_time(); w = time.perf_counter()
    for _ in range(reps): out = fn()
    print(f"{label:40s} cpu {(time.process_time()-t)/reps:7.2f} s  wall {(time.perf_counter()-w)/reps:7.2f} s", flush=True)
    return out
loaded = T("load f64", lambda: load_model("smollm2", device="cpu", dtype=torch.float64, attn_implementation="sdpa", progress=lambda *a: None))
model, tok = loaded.model, loaded.tokenizer
enc = Encoder(tok, settings["max_prompt_tokens"], settings["max_response_tokens"])
train, probe_ex, test, irr = _examples(dict(settings, n_probe=max(n_probe, 2)))
pad = tok.pad_token_id
with first_order.exact_math(model):
    probes = T("probe set (generation)", lambda: build_probe_set(model, tok, enc, probe_ex[:n_probe], train, test, settings, progress=lambda *a: None, irrelevant=irr))
    seqs = [(p, r) for _, _, p, r in probe_sequences(probes)]
    ntok = sum(len(p)+len(r) for p, r in seqs); lens = [len(p)+len(r) for p, r in seqs]
    print(len(seqs), "sequences", ntok, "tokens; padded at batch", batch, sum(max(lens[i:i+batch])*len(lens[i:i+batch]) for i in range(0, len(lens), batch)))
    pairs = _tokenize_pairs(enc, probe_ex[:2])
    for dt in (torch.float64, torch.float32):
        model.to(dt)
        with torch.no_grad():
            T(f"forward {dt}", lambda: first_order.probe_logps(model, seqs, pad, dev, batch))
        with factored_jvp.capture(model) as f:
            d = T(f"sgd direction {dt}", lambda: first_order.sgd_direction(model, (pairs[0]["prompt"], pairs[0]["rejected"]), 1.0, pad, dev))
        T(f"factored jvp {dt}", lambda: factored_jvp.predicted_per_unit_eta(model, seqs, d, f, pad, dev, batch))
        T(f"dense jvp {dt}", lambda: first_order.predicted_per_unit_eta(model, seqs, d, pad, dev, batch))
        T(f"token squeeze pair {dt}", lambda: token_squeeze.check_pair(model, pairs[0], 0.5, pad, dev))
    opt = torch.optim.AdamW(model.parameters(), lr=5e-6)
    tp = _tokenize_pairs(enc, train)
    for bp in (1, 4):
        def step():
            loss, m, _ = algos.step_loss("sft", "main", model, tp[:bp], settings, pad, dev)
            opt.zero_grad(); loss.backward(); opt.step()
        T(f"sft step f32 bp={bp}", step, reps=2)
