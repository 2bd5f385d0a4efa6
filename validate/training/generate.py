"""Batched generation from token ids."""
import torch


@torch.no_grad()
def generate(model, prompts, eos_ids, pad_id: int, max_new_tokens: int, sample: bool = False,
             seed: int = 0, temperature: float = 1.0, batch_size: int = 64, fixed_length: bool = False) -> list:
    """Continue each prompt (a list of token ids); returns the new ids, cut at the first eos.

    fixed_length: the eos ids are suppressed and every continuation has exactly
    max_new_tokens tokens (so repetition statistics compare equal lengths).

    Left-padded batches through `model.generate`; sampling is seeded per call so a
    resumed run draws the same samples.
    """
    device = next(model.parameters()).device
    out = []
    generator_state = torch.random.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    torch.manual_seed(seed)
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            width = max(len(p) for p in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, p in enumerate(chunk):
                ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
                mask[row, width - len(p):] = 1
            options = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if sample \
                else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
            new = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 max_new_tokens=max_new_tokens, eos_token_id=list(eos_ids),
                                 pad_token_id=pad_id, **options,
                                 **({"min_new_tokens": max_new_tokens} if fixed_length else {}))[:, width:]
            for row in new.tolist():
                cut = len(row) if fixed_length else next((i for i, t in enumerate(row) if t in eos_ids), len(row))
                out.append(row[:cut])
    finally:
        torch.random.set_rng_state(generator_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state_all(cuda_state)
    return out

