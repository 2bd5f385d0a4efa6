"""A tiny causal transformer for the toy language (nanoGPT-like, CPU, float32).

Small on purpose: two layers of width 64 learn the synthetic language in well
under a minute on two cores, yet the model is a real transformer (shared
embeddings, attention over the prompt), so the eNTK couples similar contexts
the way the paper's LLMs do. Tied input/output embeddings matter here: a push
on a token's logit at one context moves that token's embedding and so every
context, which is the coupling that makes other prompts' answers rise in SFT.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class ToyConfig:
    vocab_size: int
    block_size: int = 40
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    tie_embeddings: bool = True


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ToyConfig):
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # [B, T, C] -> [B, heads, T, C/heads]
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self, config: ToyConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = nn.Sequential(nn.Linear(config.n_embd, 4 * config.n_embd), nn.GELU(),
                                 nn.Linear(4 * config.n_embd, config.n_embd))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class ToyGPT(nn.Module):
    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight  # tied, as in GPT-2
        self.apply(self._init_weights)
        # GPT-2's scaled init of residual projections keeps early training stable.
        for name, param in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx):
        """Logits [B, T, V]; logits[:, t] predicts idx[:, t + 1]."""
        T = idx.shape[1]
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens exceeds block_size {self.config.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))

    @torch.no_grad()
    def sample(self, prompts, eos_id: int, pad_id: int, max_new_tokens: int,
               generator: torch.Generator, temperature: float = 1.0):
        """Sample one continuation per prompt (lists of token ids), each ending at eos.

        Batched with right padding: every row keeps its own write position, and
        causal attention means the padding to the right of a row never reaches it.
        """
        lengths = torch.tensor([len(p) for p in prompts])
        width = int(lengths.max()) + max_new_tokens
        if width > self.config.block_size:
            raise ValueError(f"prompt + {max_new_tokens} new tokens exceeds block_size")
        buffer = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            buffer[row, :len(prompt)] = torch.tensor(prompt)
        position = lengths.clone()
        done = torch.zeros(len(prompts), dtype=torch.bool)
        rows = torch.arange(len(prompts))
        for _ in range(max_new_tokens):
            logits = self(buffer[:, :int(position.max())])[rows, position - 1] / temperature
            next_token = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(1)
            next_token = torch.where(done, torch.full_like(next_token, pad_id), next_token)
            buffer[rows, position] = next_token
            position = position + (~done).long()
            done = done | (next_token == eos_id)
            if bool(done.all()):
                break
        outputs = []
        for row in range(len(prompts)):
            new = buffer[row, lengths[row]:position[row]].tolist()
            if not new or new[-1] != eos_id:  # ran out of room: close the response
                new = new + [eos_id]
            outputs.append(new)
        return outputs


def make_model(vocab_size: int, block_size: int, seed: int, **options) -> ToyGPT:
    torch.manual_seed(seed)
    return ToyGPT(ToyConfig(vocab_size=vocab_size, block_size=block_size, **options))
