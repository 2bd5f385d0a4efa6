"""P20 on the kernel the paper speaks of: the logit eNTK K(x_o, x_u) = grad z(x_o) grad z(x_u)^T, apart from A and G.

trajectory.kernel_matrix's K[p, u] = <grad log pi(p), grad log pi(u)> = sum_{m,l} a_m^T K_{m,l} g_l carries the
softmax factors: a_m = e_{y_m} - pi_m (the row of A that the probe's label reads) and g_l = e_{y_l} - pi_l (G of
log pi(u)). The paper lets A and G move and assumes K "relatively stable". Each checkpoint here runs a few vjp ->
jvp pairs: one vjp of a training sequence's response logits along a cotangent c gives J(u)^T c, one jvp of the
probes' response logits along it (validate.measure.factored_jvp.logit_jvp) gives K(p, u) c for every probe at once, read
off in four views:

- "K sketch": S[p, a, u, b] = w_{p,a}^T K(p, u) w_{u,b}, each w a random direction over (position, vocabulary)
  of its sequence with E[w w^T] = I (a Gaussian vector over the vocabulary times a random sign per position),
  drawn once (seeded) and the same at every checkpoint. For independent w, E<S, S'> = <K, K'>_F, so the
  sketch's cosine between checkpoints estimates the whole logit kernel's (Frobenius) cosine;
- "K tokens" (exact, no sketch): at every probe position the logits of the step-0 top tokens and of fixed random
  tokens, against the training sequence's step-0 top-token logits summed over its positions;
- "A.K.G": a^T K g summed over positions, trajectory.kernel_matrix's kernel from the same machinery;
- "A" and "G" alone: the stacked a vectors of the probes and g vectors of the training sequences.

Each view's drift is its cosine with step 0, with a bootstrap over probe and training sequences (both resampled,
scipy.stats.bootstrap on two unpaired samples). entries_by_reverse_mode is a second implementation of any entry
c_p^T K(p, u) c_u (two backward passes and a dot product), which the tests hold the jvps to. Both read the
model's true Jacobian (true_jacobian), which is also what the k-step run's steps move along up to one row.
"""
import contextlib

import numpy as np
import torch

from learning_dynamics.validate.measure import factored_jvp
from learning_dynamics.validate.training.forward import make_batch, batches, response_logits
# scipy loads inside the functions that need them, so importing this module stays light (ldyn --help)

SKETCH_PROBE = 8      # Gaussian directions per probe sequence: read off every jvp, so free
SKETCH_TRAIN = 2      # Gaussian directions per training sequence: one vjp and one jvp each
TOP_TOKENS = 4        # the exact token block: each probe position's step-0 top tokens ...
RANDOM_TOKENS = 4     # ... and this many fixed random tokens
VIEWS = ("K sketch", "K tokens", "A.K.G", "A", "G")
N_RESAMPLES = 2000


def _generator(seed: int, *key: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, *key]).generate_state(1)[0]))


def _logits_of(model, sequence, pad_id, device):
    """Response logits [L, V] and labels [L] of one sequence."""
    logits, labels, _ = response_logits(model, make_batch([sequence], pad_id).to(device))
    return logits, labels


@contextlib.contextmanager
def true_jacobian(model):
    """Backward passes that give J^T c of the model's forward: an nn.Embedding with a padding_idx drops that row's
    gradient in backward (a training convention) but not in forward-mode AD, and SmolLM2's pad token is
    <|im_end|>, which every prompt holds; inside the block no embedding has one, so a vjp and a jvp read one J."""
    embeddings = [m for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.padding_idx is not None]
    saved = [m.padding_idx for m in embeddings]
    for m in embeddings:
        m.padding_idx = None
    try:
        yield
    finally:
        for m, idx in zip(embeddings, saved):
            m.padding_idx = idx


def _gradient(model, sequence, cotangent, pad_id, device) -> tuple:
    """(J(u)^T c as name -> tensor, its validate.measure.factored_jvp factors): one forward and backward of `sequence`."""
    model.zero_grad(set_to_none=True)
    with true_jacobian(model), factored_jvp.capture(model, sign=1.0) as factors:
        logits, _ = _logits_of(model, sequence, pad_id, device)
        (logits * cotangent.to(device=logits.device, dtype=logits.dtype)).sum().backward()
    direction = {k: v.grad.detach().clone() for k, v in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return direction, factors


def _residual(logits, labels) -> torch.Tensor:
    """e_y - pi at every position [L, V]: d log pi(y) / dz, the probe's A row and the training sequence's G."""
    out = -torch.softmax(logits.double(), dim=-1)
    out[torch.arange(len(labels)), labels] += 1.0
    return out


class KernelViews:
    """The readouts fixed at step 0 and every checkpoint's values of each view (see the module doc).

    sketch_support: token ids the Gaussian directions are restricted to (None: the whole vocabulary); a test
    restricts them to a few tokens, where the exact kernel can be computed entry by entry.
    """

    def __init__(self, model, probes, trains, pad_id, device, batch_size, seed=0, sketch_probe=SKETCH_PROBE,
                 sketch_train=SKETCH_TRAIN, sketch_support=None):
        self.model, self.probes, self.trains = model, list(probes), list(trains)
        self.args, self.seed = (pad_id, device, batch_size), seed
        self.sketch_probe, self.sketch_train = sketch_probe, sketch_train
        self.support = None if sketch_support is None else torch.as_tensor(sketch_support, dtype=torch.long)
        self.values = {}           # step -> view -> [probe][train] arrays (A: [probe][0], G: [0][train])
        self._first = {"a": {}, "g": {}}   # step-0 A and G vectors, kept to compare later ones with
        self._omega_probe = {}
        self.tokens = self.train_top = None

    # ------------------------------------------------------------------ fixed readouts (drawn at step 0)
    def _directions(self, kind: int, index: int, rows: int, vocab: int, count: int) -> tuple:
        """(signs [rows, count], g [support or V, count]): direction a is w[m, v] = signs[m, a] g[v, a], Gaussian
        over the vocabulary and a random sign per position, so E[w w^T] = I (all the sketch's unbiasedness needs)
        at a V-vector's storage, not a [rows, V] one; the same at every checkpoint."""
        gen = _generator(self.seed, kind, index)
        width = vocab if self.support is None else len(self.support)
        g = torch.randn(width, count, generator=gen, dtype=torch.float64)
        signs = torch.randint(2, (rows, count), generator=gen).double() * 2 - 1
        return signs, g

    def _on_support(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.support is None else t[:, self.support]

    def _probe_directions(self, s: int, rows: int, vocab: int) -> tuple:
        if s not in self._omega_probe:
            self._omega_probe[s] = self._directions(0, s, rows, vocab, self.sketch_probe)
        return self._omega_probe[s]

    def sketch_readout(self, s: int, t: torch.Tensor) -> torch.Tensor:
        """w_{s,a} . t for every direction a of probe s: [count], from a logit tangent t [rows, V]."""
        signs, g = self._probe_directions(s, *t.shape)
        return (signs * (self._on_support(t) @ g)).sum(0)

    def omega_probe(self, s: int, rows: int, vocab: int) -> torch.Tensor:
        """Probe s's directions as one dense [rows * (support or V), count] matrix (for checks; the sketch reads
        them through sketch_readout)."""
        signs, g = self._probe_directions(s, rows, vocab)
        return (signs[:, None, :] * g[None]).reshape(-1, self.sketch_probe)

    def omega_train(self, u: int, rows: int, vocab: int) -> list:
        """Training sequence u's directions, each a cotangent [rows, V] (zero off the support)."""
        signs, g = self._directions(1, u, rows, vocab, self.sketch_train)
        out = []
        for b in range(self.sketch_train):
            full = torch.zeros(rows, vocab, dtype=torch.float64)
            full[:, self.support if self.support is not None else slice(None)] = signs[:, b, None] * g[:, b]
            out.append(full)
        return out

    def _fix_tokens(self, probe_logits: dict) -> None:
        """Each probe position's step-0 top tokens and fixed random ones; each training position's top token."""
        self.tokens = {}
        for s, logits in probe_logits.items():
            top = logits.topk(min(TOP_TOKENS, logits.shape[-1]), dim=-1).indices.cpu()
            rand = torch.randint(logits.shape[-1], (logits.shape[0], RANDOM_TOKENS),
                                 generator=_generator(self.seed, 2, s))
            self.tokens[s] = torch.cat([top, rand], dim=1)
        self.train_top = []
        with torch.no_grad():
            for sequence in self.trains:
                self.train_top.append(_logits_of(self.model, sequence, *self.args[:2])[0].argmax(-1).cpu())

    # ------------------------------------------------------------------ one checkpoint
    @torch.no_grad()
    def _probe_logits(self) -> dict:
        pad_id, device, batch_size = self.args
        out = {}
        for indices, batch in batches(self.model, self.probes, batch_size, pad_id):
            logits, labels, rows = response_logits(self.model, batch.to(device))
            for j, s in enumerate(indices):
                out[s] = (logits[rows == j].double().cpu(), labels[rows == j].cpu())
        return out

    def _cotangents(self, u: int, logits, labels) -> list:
        """(view, cotangent [L, V]) pairs of training sequence u at this checkpoint."""
        one_hot = torch.zeros_like(logits, dtype=torch.float64)
        one_hot[torch.arange(len(labels)), self.train_top[u].to(logits.device)] = 1.0
        return ([("A.K.G", _residual(logits, labels))]
                + [("K sketch", w) for w in self.omega_train(u, *logits.shape)] + [("K tokens", one_hot)])

    def _read(self, view: str, out: dict, probe_logits: dict):
        """A logit_jvp reader that files each probe's readout of `view` into out[s]."""
        def read(indices, labels, rows, logits, tangent):
            for j, s in enumerate(indices):
                t = tangent[rows == j].double().cpu()
                if view == "K sketch":
                    value = self.sketch_readout(s, t)
                elif view == "K tokens":
                    value = t.gather(1, self.tokens[s]).reshape(-1)
                else:   # a^T K g: the label's row of A, e_y - pi
                    value = (_residual(probe_logits[s][0], probe_logits[s][1]) * t).sum().reshape(1)
                out.setdefault(s, []).append(value.numpy())
        return read

    def measure(self, step: int) -> None:
        """Every view's values at the model's current parameters, filed under `step` (step 0 fixes readouts)."""
        pad_id, device, batch_size = self.args
        probe_logits = self._probe_logits()
        if self.tokens is None:
            self._fix_tokens({s: v[0] for s, v in probe_logits.items()})
        values = {view: [[None] * len(self.trains) for _ in self.probes] for view in VIEWS[:3]}
        g_vectors = []
        for u, sequence in enumerate(self.trains):
            with torch.no_grad():
                logits, labels = _logits_of(self.model, sequence, pad_id, device)
            g_vectors.append(_residual(logits, labels).cpu())
            filed = {view: {} for view in VIEWS[:3]}
            for view, cotangent in self._cotangents(u, logits.double(), labels):
                direction, factors = _gradient(self.model, sequence, cotangent, pad_id, device)
                factored_jvp.logit_jvp(self.model, self.probes, direction, factors, pad_id, device, batch_size,
                                       self._read(view, filed[view], probe_logits))
            for view in filed:
                for s in range(len(self.probes)):
                    values[view][s][u] = np.concatenate(filed[view][s])
        a_vectors = [_residual(*probe_logits[s]) for s in range(len(self.probes))]
        values["A"] = [[self._against_first("a", s, a)] for s, a in enumerate(a_vectors)]
        values["G"] = [[self._against_first("g", u, g) for u, g in enumerate(g_vectors)]]
        self.values[step] = values

    def _against_first(self, side: str, index: int, vector: torch.Tensor) -> np.ndarray:
        """(<v_0, v>, |v_0|^2, |v|^2) of an A or G vector: the step-0 vectors are kept, later ones are not."""
        first = self._first[side].setdefault(index, vector)
        return np.array([float((first * vector).sum()), float((first * first).sum()), float((vector * vector).sum())])

    # ------------------------------------------------------------------ drift
    def drift(self, seed: int = 0) -> dict:
        """Per view: cosine with step 0 at every checkpoint, its bootstrap CI, and the norm ratio."""
        steps = sorted(self.values)
        out = {}
        for view in VIEWS:
            sums = [self._sums(view, steps[0], t) for t in steps]
            cis = [cosine_with_ci(*s, seed=seed) for s in sums]
            out[view] = {"steps": steps, "similarity": [c[0] for c in cis], "ci": [list(c[1]) for c in cis],
                         "norm_ratio": [float(np.sqrt(s[2].sum() / max(s[1].sum(), 1e-300))) for s in sums],
                         "n_probe": int(sums[0][0].shape[0]), "n_train": int(sums[0][0].shape[1])}
        half = self.sketch_probe // 2
        out["K sketch"]["halves"] = [cosine_of(self._half(steps[0], part), self._half(steps[-1], part))
                                     for part in (0, 1)] if half else []
        return out

    def _sums(self, view: str, first: int, later: int) -> tuple:
        """[probe, train] arrays of <v_first, v_later>, |v_first|^2, |v_later|^2 for one view."""
        if view in ("A", "G"):
            triples = np.array([[cell for cell in row] for row in self.values[later][view]], dtype=float)
            return triples[..., 0], triples[..., 1], triples[..., 2]
        a, b = self.values[first][view], self.values[later][view]
        dot = np.array([[float(x @ y) for x, y in zip(ra, rb)] for ra, rb in zip(a, b)])
        n0 = np.array([[float(x @ x) for x in ra] for ra in a])
        nt = np.array([[float(y @ y) for y in rb] for rb in b])
        return dot, n0, nt

    def sketch_matrices(self) -> dict:
        """step -> S [probe, train, train direction, probe direction] (nested lists, for the JSON)."""
        return {str(t): [[cell.reshape(self.sketch_train, self.sketch_probe).tolist() for cell in row]
                         for row in v["K sketch"]] for t, v in self.values.items()}

    def _half(self, step: int, part: int) -> list:
        """The sketch from one half of the probe-side directions: two independent sketches of one kernel."""
        half = self.sketch_probe // 2
        return [[cell.reshape(self.sketch_train, self.sketch_probe)[:, part * half:(part + 1) * half].ravel()
                 for cell in row] for row in self.values[step]["K sketch"]]


def cosine_of(first, later) -> float:
    dot = sum(float(x @ y) for ra, rb in zip(first, later) for x, y in zip(ra, rb))
    n0 = sum(float(x @ x) for ra in first for x in ra)
    nt = sum(float(y @ y) for rb in later for y in rb)
    return dot / max(np.sqrt(n0 * nt), 1e-300)


def cosine_with_ci(dot, n0, nt, seed: int = 0, level: float = 0.95) -> tuple:
    """Cosine of two block matrices from per-block sums ([probe, train] arrays), and a percentile bootstrap CI
    that resamples probe rows and training columns independently (each axis with more than one entry).

    A resample is a count per row and per column, so its cosine is w_r^T dot w_c / sqrt(w_r^T n0 w_c w_r^T nt w_c):
    every resample at once (scipy.stats.bootstrap, vectorized).
    """
    from scipy.stats import bootstrap
    dot, n0, nt = (np.asarray(a, dtype=float) for a in (dot, n0, nt))
    axes = [i for i, n in enumerate(dot.shape) if n > 1]

    def statistic(*picked, axis=-1):
        weights = [np.ones(n) for n in dot.shape]
        for i, idx in zip(axes, picked):
            weights[i] = (np.asarray(idx)[..., :, None] == np.arange(dot.shape[i])).sum(-2)
        total = [np.einsum("...s,su,...u->...", weights[0], m, weights[1]) for m in (dot, n0, nt)]
        return total[0] / np.maximum(np.sqrt(total[1] * total[2]), 1e-300)

    point = float(statistic(*[np.arange(dot.shape[i]) for i in axes]))
    if not axes or not np.isfinite(point):
        return point, (float("nan"), float("nan"))
    res = bootstrap(tuple(np.arange(dot.shape[i]) for i in axes), statistic, paired=False, vectorized=True,
                    n_resamples=N_RESAMPLES, method="percentile", confidence_level=level,
                    rng=np.random.default_rng(seed))
    return point, (float(res.confidence_interval.low), float(res.confidence_interval.high))


def entries_by_reverse_mode(model, probe, probe_cotangent, train, train_cotangent, pad_id, device) -> float:
    """c_p^T K(p, u) c_u = <J(p)^T c_p, J(u)^T c_u>: two backward passes and a dot product over every parameter.

    The second implementation of what KernelViews reads off its jvps (forward over reverse, through the
    kernel's factors); no forward-mode AD, no factoring, no batching.
    """
    grads = []
    for sequence, cotangent in ((probe, probe_cotangent), (train, train_cotangent)):
        model.zero_grad(set_to_none=True)
        with true_jacobian(model):
            logits, _ = _logits_of(model, sequence, pad_id, device)
            (logits * cotangent.to(device=logits.device, dtype=logits.dtype)).sum().backward()
        grads.append({k: v.grad.detach().clone() for k, v in model.named_parameters()})
    model.zero_grad(set_to_none=True)
    return float(sum((grads[0][k].double() * grads[1][k].double()).sum() for k in grads[0]))
