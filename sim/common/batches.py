"""Right-padded token batches: the one padding loop behind the toy LM's and the real model's batches."""
import torch


def right_pad(rows, pad_id: int):
    """Token lists -> (ids [B, T] long, filled with pad_id after each row, lengths [B] long)."""
    rows = [list(r) for r in rows]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    return ids, torch.tensor([len(r) for r in rows], dtype=torch.long)


def span_mask(width: int, starts, stops) -> torch.Tensor:
    """[B, width] bool, True on columns starts[b] <= t < stops[b]."""
    columns = torch.arange(width)
    return (columns >= torch.as_tensor(starts)[:, None]) & (columns < torch.as_tensor(stops)[:, None])
