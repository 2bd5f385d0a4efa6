"""The empirical neural tangent kernel (eNTK) of a torch model, two ways, plus the AKG prediction.

A small functional API in the style of neural-tangents: a model becomes
`apply_fn(params, x) -> logits [N, V]` with `params` a dict of tensors, and every
kernel function takes `(apply_fn, params, x1, x2)`.

K(x1, x2) = J(x1) J(x2)^T, with J(x) = d logits(x) / d theta, so a kernel over
N1 x N2 inputs is a [N1, N2, V, V] tensor of V x V blocks (the paper's K(x_o, x_u)).

Two independent implementations (they share nothing but `apply_fn`):
  entk_jacobian_contraction  per-example Jacobians (reverse mode, jacrev + vmap), then contract.
  entk_ntk_vector_products   never builds J: one vjp gives J(x2)^T e for each output basis
                             vector e of x2, one jvp (forward mode) pushes it through x1.
The first is faster for small models; the second needs memory O(outputs), not O(params x outputs).
"""
import numpy as np
import torch
from torch.func import functional_call, jacrev, jvp, vjp, vmap
from learning_dynamics.theory.decomposition import akg_dlogp


def functionalize(model: torch.nn.Module):
    """(apply_fn, params): apply_fn(params, x) runs `model` with the given parameter tensors."""
    params = {name: p.detach() for name, p in model.named_parameters()}

    def apply_fn(params, x):
        return functional_call(model, params, (x,))

    return apply_fn, params


def _single_example(apply_fn):
    # vmap hands one example without its batch axis; the model expects one.
    return lambda params, x: apply_fn(params, x.unsqueeze(0)).squeeze(0)


def per_example_jacobians(apply_fn, params, x) -> dict:
    """{name: [N, V, *param.shape]}: d logits(x_n) / d param for every example."""
    return vmap(jacrev(_single_example(apply_fn)), in_dims=(None, 0))(params, x)


def _chunks(n: int, size):
    size = n if size is None else max(1, int(size))
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def entk_jacobian_contraction(apply_fn, params, x1, x2, chunk_size=None) -> torch.Tensor:
    """K [N1, N2, V, V] by contracting per-example Jacobians over every parameter.

    chunk_size bounds memory: Jacobians of at most that many x1 examples live at once.
    """
    jac2 = per_example_jacobians(apply_fn, params, x2)
    blocks = []
    for rows in _chunks(len(x1), chunk_size):
        jac1 = per_example_jacobians(apply_fn, params, x1[rows])
        blocks.append(sum(torch.einsum("naP,mbP->nmab", jac1[k].flatten(2), jac2[k].flatten(2))
                          for k in jac1))
    return torch.cat(blocks, dim=0)


def entk_ntk_vector_products(apply_fn, params, x1, x2, chunk_size=None) -> torch.Tensor:
    """K [N1, N2, V, V] from NTK-vector products: K e = J(x1) (J(x2)^T e), e a basis vector.

    Reverse mode (vjp) maps each output basis vector of f(x2) to a parameter-space
    direction; forward mode (jvp) gives that direction's logit change on all of x1.
    chunk_size bounds memory: at most that many x2 examples' basis vectors at once.
    """
    logits2, pullback = vjp(lambda p: apply_fn(p, x2), params)
    n2, classes = logits2.shape

    def column(cotangent):
        (direction,) = pullback(cotangent)
        return jvp(lambda p: apply_fn(p, x1), (params,), (direction,))[1]   # [N1, V]

    columns = []
    for cols in _chunks(n2, chunk_size):
        # Basis vectors for the outputs of the x2 examples in this chunk: [n*V, N2, V].
        eye = torch.zeros(cols.stop - cols.start, classes, n2, classes,
                          dtype=logits2.dtype, device=logits2.device)
        for i, m in enumerate(range(cols.start, cols.stop)):
            eye[i, :, m, :] = torch.eye(classes, dtype=logits2.dtype, device=logits2.device)
        columns.append(vmap(column)(eye.flatten(0, 1)).unflatten(0, (-1, classes)))  # [n, V, N1, V]
    return torch.cat(columns, dim=0).permute(2, 0, 3, 1)                         # [N1, N2, V, V]


def entk_self(apply_fn, params, x, chunk_size=None) -> torch.Tensor:
    """The diagonal blocks K(x_n, x_n) [N, V, V]: what one example's own step does to itself."""
    blocks = []
    for rows in _chunks(len(x), chunk_size):
        jac = per_example_jacobians(apply_fn, params, x[rows])
        blocks.append(sum(torch.einsum("naP,nbP->nab", j.flatten(2), j.flatten(2)) for j in jac.values()))
    return torch.cat(blocks, dim=0)


def entk_of_group_means(apply_fn, params, groups) -> torch.Tensor:
    """K [G, G, V, V] between group-averaged logits: exactly the group-averaged eNTK.

    K is bilinear in the Jacobians and the Jacobian of a mean is the mean of the
    Jacobians, so mean_{o in g, u in h} K(x_o, x_u) = J(mean_g f) J(mean_h f)^T:
    V backward passes per group instead of a kernel over every pair.
    """
    def group_mean_jacobian(x):
        jac = jacrev(lambda p: apply_fn(p, x).mean(dim=0))(params)        # {name: [V, *shape]}
        return torch.cat([j.flatten(1) for j in jac.values()], dim=1)       # [V, P]

    jac = torch.stack([group_mean_jacobian(x) for x in groups])             # [G, V, P]
    return torch.einsum("gaP,hbP->ghab", jac, jac)


def max_relative_difference(k_a: torch.Tensor, k_b: torch.Tensor) -> float:
    """max |K_a - K_b| / max |K_a|: relative to the kernel's scale, since many entries are ~0."""
    return float((k_a - k_b).abs().max() / k_a.abs().max())


def akg_prediction(apply_fn, params, x_obs, x_upd, residual_upd, eta: float,
                   kernel_fn=entk_jacobian_contraction, chunk_size=64) -> np.ndarray:
    """First-order change of log pi on every x_obs [N_o, V] after one SGD step on x_upd.

    residual_upd [N_u, V] is G = dLoss/dlogits(x_upd) of the loss actually stepped
    (for a mean loss over B examples, (pi - e_y) / B). The step is
    theta' = theta - eta sum_u J(x_u)^T G_u, so dlog pi(x_o) = -eta sum_u A(x_o) K(x_o, x_u) G_u.
    The formula itself is theory's (theory.decomposition.akg_dlogp), in float64.
    """

    with torch.no_grad():
        pi_obs = torch.softmax(apply_fn(params, x_obs), dim=-1)
    kernel = kernel_fn(apply_fn, params, x_obs, x_upd, chunk_size=chunk_size)   # [N_o, N_u, V, V]
    pi_obs = pi_obs.detach().double().cpu().numpy()[:, None, :]            # [N_o, 1, V]
    residual = np.asarray(residual_upd, dtype=np.float64)[None]            # [1, N_u, V]
    per_update = akg_dlogp(pi_obs, kernel.detach().double().cpu().numpy(), residual, eta)
    return per_update.sum(axis=1)                                          # linear in G: sum over u
