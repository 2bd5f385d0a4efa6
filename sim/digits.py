"""`ldyn sim digits`: learning dynamics of a real digit classifier (scikit-learn's 8x8 digits).

One small tanh MLP, trained to >95% test accuracy, then five checks of the paper's
picture on it, all in float64 on a copy of the trained weights:
  1. the eNTK by two independent implementations agrees (sim.ntk);
  2. AKG: one SGD step on one training image changes log pi on every held-out image
     by -eta A K G to first order; the error shrinks as eta^2;
  3. influence: learning class a raises p(a | images of class b) more when class b
     is eNTK-similar to class a (the paper's MNIST "4 vs 9" picture);
  4. squeezing: a negative step on a low-probability wrong class pushes mass into
     the top class; theory's first-order threshold predicts which classes rise;
  5. figures (sim/digits_figures.py) and a JSON summary; the command is sim/digits_cli.py.
torch is imported inside functions so that `ldyn --help` stays fast.
"""
import sys

from learning_dynamics.sim.common.io import writable_folder
from learning_dynamics.theory.errors import UserError
from learning_dynamics.theory import arguments as arg
from learning_dynamics.theory.decomposition import akg_dlogp
from learning_dynamics.theory.statistics import precision_recall
from learning_dynamics.theory.squeeze import threshold
from learning_dynamics.sim.digits_figures import plot_akg, plot_influence, plot_negative_step
from learning_dynamics.sim.common.io import atomic_write_json

DEFAULT_OUT = "ldyn-out/sim/digits"
CLASSES = 10
# Everything a run does; --quick runs the same code on less (tests use it).
PRESETS = {
    "default": dict(epochs=40, hidden=64, n_ntk=64, n_influence=25, n_squeeze=540, n_eta=6),
    "quick": dict(epochs=15, hidden=32, n_ntk=16, n_influence=10, n_squeeze=150, n_eta=4),
}
TRAIN_LR = 3e-3
BATCH_SIZE = 32
SPLIT_SEED = 0            # the train/test split is fixed; --seed moves init and batch order
INFLUENCE_ETA = 0.5       # one SGD step on a class's mean loss: small enough to stay first order
NEGATIVE_ETA = 0.005      # one step lowering log p(wrong | x): a median drop of ~1 nat, still first order
EXAMPLE_PAIR = (4, 9, 0)  # the paper's example: learning 4 lifts p(4 | 9s) more than p(4 | 0s)


# --------------------------------------------------------------------------- data and model

def load_split():
    """Fixed stratified 70/30 split of load_digits, standardized with the train statistics."""
    import numpy as np
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=0.3, stratify=digits.target, random_state=SPLIT_SEED)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1.0   # +1: some pixels are always 0
    as_x = lambda a: torch.tensor((a - mean) / std, dtype=torch.float32)
    as_y = lambda a: torch.tensor(np.asarray(a), dtype=torch.long)
    return {"train_x": as_x(x_train), "train_y": as_y(y_train), "test_x": as_x(x_test),
            "test_y": as_y(y_test), "test_images": digits.images[_test_indices(digits, y_test)]}


def _test_indices(digits, y_test):
    # train_test_split does not return indices; re-split an index array the same way.
    import numpy as np
    from sklearn.model_selection import train_test_split

    index = np.arange(len(digits.target))
    _, test_index = train_test_split(index, test_size=0.3, stratify=digits.target, random_state=SPLIT_SEED)
    assert (digits.target[test_index] == y_test).all()
    return test_index


def make_mlp(hidden: int):
    """tanh, like the paper's LeNet: smooth, so the O(eta^2) remainder is clean."""
    import torch.nn as nn

    return nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                         nn.Linear(hidden, CLASSES))


def train_classifier(data, hidden: int, epochs: int, seed: int, progress: bool = True):
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    torch.manual_seed(seed)
    model = make_mlp(hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=TRAIN_LR)
    order = torch.Generator().manual_seed(seed)
    n = len(data["train_x"])
    for _ in tqdm(range(epochs), desc="train MLP", file=sys.stderr, disable=not progress, leave=False):
        for batch in torch.randperm(n, generator=order).split(BATCH_SIZE):
            loss = F.cross_entropy(model(data["train_x"][batch]), data["train_y"][batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model


def accuracy(model, x, y) -> float:
    import torch

    with torch.no_grad():
        return float((model(x).argmax(dim=-1) == y).double().mean())


# --------------------------------------------------------------------------- stepping helpers

def sgd_step(params, loss_fn, eta: float) -> dict:
    """Parameters after one plain SGD step theta - eta grad(loss). Functional: the trained
    weights are never modified, so every check starts from them ("restored" for free)."""
    from torch.func import grad

    grads = grad(loss_fn)(params)
    return {name: p - eta * grads[name] for name, p in params.items()}


def log_probs(apply_fn, params, x):
    import torch

    with torch.no_grad():
        return torch.log_softmax(apply_fn(params, x), dim=-1)


# --------------------------------------------------------------------------- 1. eNTK agreement

def check_ntk_agreement(apply_fn, params, data, n_ntk: int) -> dict:
    """Both eNTK implementations on n_ntk held-out x n_ntk training images, float64."""
    from learning_dynamics.sim import ntk

    x_obs, x_upd = data["test_x64"][:n_ntk], data["train_x64"][:n_ntk]
    k_jac = ntk.entk_jacobian_contraction(apply_fn, params, x_obs, x_upd, chunk_size=64)
    k_vps = ntk.entk_ntk_vector_products(apply_fn, params, x_obs, x_upd, chunk_size=16)
    return {"ntk_max_rel_diff": ntk.max_relative_difference(k_jac, k_vps),
            "ntk_pairs": [int(len(x_obs)), int(len(x_upd))]}


# --------------------------------------------------------------------------- 2. AKG check

def check_akg(apply_fn, params, data, n_eta: int) -> dict:
    """One SGD step on the hardest training image vs -eta A K G on every held-out image.

    The hardest image (largest loss) has the largest residual G, so the step moves
    things visibly. The etas are set from the predicted change per unit eta, so the
    largest predicted change runs from 1e-3 to ~0.3 nats whatever the model's scale.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F
    from learning_dynamics.sim import ntk

    train_x, train_y, test_x = data["train_x64"], data["train_y"], data["test_x64"]
    with torch.no_grad():
        losses = F.cross_entropy(apply_fn(params, train_x), train_y, reduction="none")
    u = int(losses.argmax())
    x_u, y_u = train_x[u:u + 1], train_y[u:u + 1]
    pi_u = torch.softmax(apply_fn(params, x_u), dim=-1).detach()
    residual = (pi_u - F.one_hot(y_u, CLASSES)).numpy()                   # G = pi - e_y
    per_unit_eta = ntk.akg_prediction(apply_fn, params, test_x, x_u, residual, eta=1.0)
    unit = float(np.abs(per_unit_eta).max())
    etas = np.logspace(-3, np.log10(0.3), n_eta) / unit
    before = log_probs(apply_fn, params, test_x)
    loss_u = lambda p: F.cross_entropy(apply_fn(p, x_u), y_u, reduction="sum")
    actual, errors = [], []
    for eta in etas:
        change = (log_probs(apply_fn, sgd_step(params, loss_u, eta), test_x) - before).numpy()
        actual.append(change)
        errors.append(float(np.linalg.norm(change - eta * per_unit_eta)))
    slope = float(np.polyfit(np.log(etas), np.log(errors), 1)[0])
    shown = n_eta - 2                                                   # a clearly visible, still small step
    r = float(np.corrcoef(actual[shown].ravel(), (etas[shown] * per_unit_eta).ravel())[0, 1])
    return {"akg_pearson_r": r, "akg_error_slope": slope, "akg_eta": float(etas[shown]),
            "akg_etas": etas.tolist(), "akg_errors": errors, "akg_update_index": u,
            "akg_update_label": int(y_u), "akg_update_pi_label": float(pi_u[0, y_u]),
            "_scatter": (etas[shown] * per_unit_eta, actual[shown])}


# --------------------------------------------------------------------------- 3. influence vs eNTK

def influence_matrix(apply_fn, params, data, n_influence: int):
    """influence[a, b] = mean over held-out images of class b of dlog p(a | x) after one SGD
    step on the mean loss of n_influence training images of class a (weights restored after)."""
    import numpy as np
    import torch.nn.functional as F

    test_x, test_y = data["test_x64"], data["test_y"].numpy()
    before = log_probs(apply_fn, params, test_x)
    influence = np.zeros((CLASSES, CLASSES))
    for a in range(CLASSES):
        x_a = data["train_x64"][data["train_y"] == a][:n_influence]
        y_a = data["train_y"][data["train_y"] == a][:n_influence]
        loss_a = lambda p: F.cross_entropy(apply_fn(p, x_a), y_a)
        change = (log_probs(apply_fn, sgd_step(params, loss_a, INFLUENCE_ETA), test_x)
                  - before)[:, a].numpy()
        influence[a] = [change[test_y == b].mean() for b in range(CLASSES)]
    return influence


def class_similarity(apply_fn, params, data, n_influence: int):
    """similarity[a, b] = trace of the class-averaged eNTK between the training images of
    class a that the influence step uses and the held-out images of class b, over V."""
    from learning_dynamics.sim import ntk

    updates = [data["train_x64"][data["train_y"] == a][:n_influence] for a in range(CLASSES)]
    observed = [data["test_x64"][data["test_y"] == b] for b in range(CLASSES)]
    kernel = ntk.entk_of_group_means(apply_fn, params, updates + observed)   # [2C, 2C, V, V]
    cross = kernel[:CLASSES, CLASSES:]                                        # [a (update), b (observed)]
    return (cross.diagonal(dim1=-2, dim2=-1).mean(dim=-1)).numpy()


def check_influence(apply_fn, params, data, n_influence: int) -> dict:
    """Does eNTK similarity predict which classes a class's learning lifts? Off-diagonal only:
    the diagonal (learning a lifts p(a | a)) is large in both and would flatter the correlation."""
    import numpy as np
    from scipy.stats import spearmanr

    influence = influence_matrix(apply_fn, params, data, n_influence)
    similarity = class_similarity(apply_fn, params, data, n_influence)
    off = ~np.eye(CLASSES, dtype=bool)
    rho = float(spearmanr(influence[off], similarity[off])[0])
    row_rhos = [float(spearmanr(influence[a][off[a]], similarity[a][off[a]])[0]) for a in range(CLASSES)]
    # For each learned class: is the most eNTK-similar other class lifted more than the least?
    most = [int(np.argmax(np.where(off[a], similarity[a], -np.inf))) for a in range(CLASSES)]
    least = [int(np.argmin(np.where(off[a], similarity[a], np.inf))) for a in range(CLASSES)]
    ordered = [bool(influence[a, most[a]] > influence[a, least[a]]) for a in range(CLASSES)]
    return {"influence": influence.tolist(), "similarity": similarity.tolist(),
            "influence_eta": INFLUENCE_ETA, "influence_n_update": n_influence,
            "influence_spearman_offdiag": rho, "influence_spearman_rows_mean": float(np.mean(row_rhos)),
            "influence_most_vs_least_similar": {"most_similar": most, "least_similar": least,
                                                 "fraction_ordered": float(np.mean(ordered))},
            "influence_paper_pair": pair_report(influence, similarity, *EXAMPLE_PAIR),
            "influence_pair_for_4": pair_report(influence, similarity, 4, most[4], least[4])}


def pair_report(influence, similarity, learned: int, first: int, second: int) -> dict:
    """Does learning `learned` lift p(learned | first) above p(learned | second), and does
    the eNTK similarity order the two classes the same way?"""
    lifted_more = bool(influence[learned, first] > influence[learned, second])
    similar_more = bool(similarity[learned, first] > similarity[learned, second])
    return {"learned": learned, "observed": [first, second],
            "dlogp": [float(influence[learned, first]), float(influence[learned, second])],
            "similarity": [float(similarity[learned, first]), float(similarity[learned, second])],
            "first_lifted_more": lifted_more, "entk_predicts_order": lifted_more == similar_more}


# --------------------------------------------------------------------------- 4. squeezing

def negative_step_changes(apply_fn, params, x, wrong, eta: float):
    """dlog pi [N, V] after, separately for each image, one step theta - eta grad log p(wrong | x)."""
    import torch
    import torch.nn.functional as F
    from torch.func import grad, vmap

    def log_p_wrong(p, x_n, wrong_one_hot):
        # a one-hot dot product, not indexing: vmap cannot index by a batched tensor
        return (torch.log_softmax(apply_fn(p, x_n.unsqueeze(0)), dim=-1)[0] * wrong_one_hot).sum()

    wrong_one_hot = F.one_hot(wrong, CLASSES).to(x.dtype)
    grads = vmap(grad(log_p_wrong), in_dims=(None, 0, 0))(params, x, wrong_one_hot)
    stepped = {name: p - eta * grads[name] for name, p in params.items()}      # one copy per image
    after = vmap(lambda p, x_n: torch.log_softmax(apply_fn(p, x_n.unsqueeze(0)), dim=-1)[0],
                 in_dims=(0, 0))(stepped, x)
    return (after - log_probs(apply_fn, params, x)).detach().numpy()


def check_squeeze(apply_fn, params, data, n_squeeze: int) -> dict:
    """Negative step on each image's least likely class (an off-policy "valley" label).

    Measured rising set: the labels i != wrong with dlog p_i > 0. Predicted three ways:
    theory's first-order threshold (K = c I), and -eta A K G with the model's own eNTK
    block K(x, x), its diagonal only and in full.
    """
    import numpy as np
    import torch
    from learning_dynamics.sim import ntk

    x = data["test_x64"][:n_squeeze]
    pi = torch.softmax(apply_fn(params, x), dim=-1).detach().numpy()
    wrong = pi.argmin(axis=-1)
    change = negative_step_changes(apply_fn, params, x, torch.as_tensor(wrong), NEGATIVE_ETA)
    rows = np.arange(len(x))
    others = np.ones_like(pi, dtype=bool)
    others[rows, wrong] = False
    top = np.where(others, pi, -np.inf).argmax(axis=-1)
    rises = (change > 0) & others

    residual = np.eye(CLASSES)[wrong] - pi            # the loss stepped is log p(wrong): G = e_wrong - pi
    self_kernel = ntk.entk_self(apply_fn, params, x, chunk_size=128).numpy()
    diag_kernel = np.einsum("nab,ab->nab", self_kernel, np.eye(CLASSES))
    predicted = {
        "threshold": pi > np.reshape(threshold(pi, wrong, sign=-1), (-1, 1)),
        "entk_diagonal": akg_dlogp(pi, diag_kernel, residual, NEGATIVE_ETA) > 0,
        "entk_full": akg_dlogp(pi, self_kernel, residual, NEGATIVE_ETA) > 0,
    }
    scores = {name: precision_recall(rise[others], rises[others]) for name, rise in predicted.items()}
    return {"squeeze_n_images": int(len(x)), "squeeze_eta": NEGATIVE_ETA,
            "squeeze_wrong_falls": float((change[rows, wrong] < 0).mean()),
            "squeeze_median_wrong_dlogp": float(np.median(change[rows, wrong])),
            "squeeze_median_top_pi": float(np.median(pi[rows, top])),
            "squeeze_top_rises": float((change[rows, top] > 0).mean()),
            "squeeze_others_fall": float((change[others & (np.arange(CLASSES) != top[:, None])] < 0).mean()),
            "squeeze_top_mass_gain": float(np.mean(pi[rows, top] * np.expm1(change[rows, top]))),
            "squeeze_precision": scores["threshold"]["precision"],
            "squeeze_recall": scores["threshold"]["recall"],
            "squeeze_scores": scores,
            "_bars": (pi, change, wrong)}


# --------------------------------------------------------------------------- the experiment

def run_digits(out=DEFAULT_OUT, seed: int = 0, preset: str = "default", progress: bool = True,
               **overrides) -> dict:
    """Train, run the four checks, write figures and summary.json into `out`; return the summary."""
    import copy

    import numpy as np
    import torch
    from tqdm import tqdm
    from learning_dynamics.sim import ntk

    settings = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    validate_settings(settings, seed)
    out = writable_folder(out)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        data = load_split()
        model = train_classifier(data, settings["hidden"], settings["epochs"], seed, progress)
        summary = {"seed": seed, "preset": preset, "settings": settings,
                   "n_train": len(data["train_x"]), "n_test": len(data["test_x"]),
                   "n_params": sum(p.numel() for p in model.parameters()),
                   "train_accuracy": accuracy(model, data["train_x"], data["train_y"]),
                   "test_accuracy": accuracy(model, data["test_x"], data["test_y"])}
        # Numeric checks in float64 on a copy: float32 round-off would blur the eta^2 slope.
        apply_fn, params = ntk.functionalize(copy.deepcopy(model).double())
        data["train_x64"], data["test_x64"] = data["train_x"].double(), data["test_x"].double()
        checks = [("eNTK agreement", lambda: check_ntk_agreement(apply_fn, params, data, settings["n_ntk"])),
                  ("AKG check", lambda: check_akg(apply_fn, params, data, settings["n_eta"])),
                  ("influence", lambda: check_influence(apply_fn, params, data, settings["n_influence"])),
                  ("squeezing", lambda: check_squeeze(apply_fn, params, data, settings["n_squeeze"]))]
        for name, check in tqdm(checks, desc="digits checks", file=sys.stderr, disable=not progress, leave=False):
            summary.update(check())
    finally:
        torch.use_deterministic_algorithms(deterministic)
    scatter, (pi, change, wrong) = summary.pop("_scatter"), summary.pop("_bars")
    shown = int(np.argmin(pi.max(axis=-1)))            # the least confident image: its bars are readable
    summary["figures"] = {
        "influence": plot_influence(summary, out / "influence_vs_entk.png").name,
        "akg": plot_akg(summary, scatter, out / "akg_predicted_vs_actual.png").name,
        "negative_step": plot_negative_step({"pi": pi[shown], "change": change[shown], "wrong": int(wrong[shown]),
                                             "eta": NEGATIVE_ETA},
                                            data["test_images"][shown], out / "negative_step_bars.png").name}
    atomic_write_json(out / "summary.json", summary)
    return summary


def validate_settings(settings: dict, seed: int) -> None:
    limits = {"epochs": 10_000, "hidden": 4096, "n_ntk": 540, "n_influence": 120, "n_squeeze": 540, "n_eta": 50}
    for name, most in limits.items():
        value = settings[name]
        if not isinstance(value, int) or not 1 <= value <= most:
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag} must be an integer from 1 to {most} (got {value!r})")
    if settings["n_eta"] < 2:
        raise UserError("--n-eta must be at least 2: the error slope needs two step sizes")
    arg.check_seed(seed)
