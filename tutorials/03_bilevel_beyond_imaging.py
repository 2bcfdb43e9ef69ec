# %% [markdown]
# # 3. `fuse4seg.bilevel` beyond imaging: learning per-feature weight decay
#
# The bi-level engine knows nothing about images. Here the lower problem is a softmax regression on
# scikit-learn's handwritten digits (8 x 8 pixels = 64 features, 10 classes) with one L2 penalty
# per feature, exp(u_j); the upper problem picks u to minimise the validation loss:
#
#     lower:  w*(u) = argmin_w  CE(X_tr w, y_tr) + 1/2 sum_j exp(u_j) ||w_j||^2
#     upper:  min_u  CE(X_val w*(u), y_val)
#
# `fuse4seg.bilevel.hypergradient(upper, lower, lower_loss, upper_loss, method, **options)` returns
# d upper / d u and the inner solution. We check it against two independent libraries on this very
# problem (implicit differentiation against TorchOpt, unrolled differentiation against higher), then
# run a few outer steps of Adam on u and plot the validation loss.
#
# Sizes come from environment variables so the test suite can run it small: `TUTORIAL_DIR`,
# `TUTORIAL_SAMPLES` (digits used, at most 1797), `TUTORIAL_OUTER` (outer steps).

# %%
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from fuse4seg.bilevel import hypergradient

work = Path(os.environ.get("TUTORIAL_DIR", "tutorial_03"))
samples = int(os.environ.get("TUTORIAL_SAMPLES", "1797"))
outer_steps = int(os.environ.get("TUTORIAL_OUTER", "40"))
work.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
DT = torch.float64

# %% [markdown]
# ## Data and the two losses
#
# Losses take two dicts of tensors, `upper` and `lower`, and return a scalar: that is the whole
# contract of the engine.

# %%
digits = load_digits()
X = torch.tensor(digits.data[:samples], dtype=DT) / 16.0
y = torch.tensor(digits.target[:samples])
order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
n_train, n_val = len(y) // 2, len(y) // 4
tr, va, te = order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]
mean, std = X[tr].mean(0), X[tr].std(0).clamp_min(1e-3)
X = (X - mean) / std
D, C = X.shape[1], 10


def lower_loss(upper: dict, lower: dict) -> torch.Tensor:
    """Training cross-entropy plus the per-feature penalty 1/2 sum_j exp(u_j) ||W_j||^2."""
    logits = X[tr] @ lower["W"] + lower["b"]
    return F.cross_entropy(logits, y[tr]) + 0.5 * (torch.exp(upper["u"])[:, None] * lower["W"] ** 2).sum()


def upper_loss(upper: dict, lower: dict, rows: torch.Tensor = va) -> torch.Tensor:
    """Validation cross-entropy of the inner solution."""
    return F.cross_entropy(X[rows] @ lower["W"] + lower["b"], y[rows])


u0 = torch.full((D,), -4.0, dtype=DT)
w0 = {"W": torch.zeros(D, C, dtype=DT), "b": torch.zeros(C, dtype=DT)}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||."""
    return float((a - b).norm() / b.norm())


# %% [markdown]
# ## Check 1: implicit differentiation against TorchOpt
#
# `implicit-cg` runs the inner solver to (near) optimality, then solves the implicit-function-theorem
# system H v = d upper / d w with conjugate gradients. TorchOpt's `custom_root` with its own CG solve
# differentiates the same optimality condition grad_w lower = 0 at the same solution.

# %%
import torchopt

warnings.filterwarnings("ignore", message=".*functorch.vjp.*")  # TorchOpt 0.7.3 on torch 2.x
res = hypergradient({"u": u0.clone().requires_grad_()}, w0, lower_loss, upper_loss, "implicit-cg",
                    steps=300, lr=0.5, cg_iters=200, tol=1e-12)
g_ours, w_star = res[0]["u"], res[1]
keys = list(w_star)


def optimality(w: tuple, u: torch.Tensor) -> tuple:
    """Stationarity of the lower problem, d lower / d w = 0."""
    return tuple(torch.func.grad(lambda ww: lower_loss({"u": u}, dict(zip(keys, ww))))(w))


@torchopt.diff.implicit.custom_root(optimality, argnums=1,
                                    solve=torchopt.linear_solve.solve_cg(maxiter=200, rtol=1e-12))
def solve_lower(w_init: tuple, u: torch.Tensor) -> tuple:
    """The inner solution found above; its derivative comes from the implicit function theorem."""
    return tuple(w_star[k].detach().clone() for k in keys)


u = u0.clone().requires_grad_()
w_sol = solve_lower(tuple(w_star[k].detach().clone() for k in keys), u)
(g_torchopt,) = torch.autograd.grad(upper_loss({"u": u}, dict(zip(keys, w_sol))), u)
print(f"implicit-cg vs TorchOpt: relative difference {relative(g_ours, g_torchopt):.2e}")
assert relative(g_ours, g_torchopt) < 1e-6

# %% [markdown]
# ## Check 2: unrolled differentiation against higher
#
# `unrolled` back-propagates through K steps of the inner optimiser. higher does the same with a
# differentiable copy of `torch.optim.SGD` around an `nn.Linear` (whose weight is W transposed).

# %%
import higher

K, lr = 25, 0.5
g_unrolled = hypergradient({"u": u0.clone().requires_grad_()}, w0, lower_loss, upper_loss, "unrolled",
                           steps=K, lr=lr, optimizer="sgd")[0]["u"]

model = torch.nn.Linear(D, C).double()
torch.nn.init.zeros_(model.weight)
torch.nn.init.zeros_(model.bias)
u = u0.clone().requires_grad_()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # higher's own deprecation notices on recent torch
    with higher.innerloop_ctx(model, torch.optim.SGD(model.parameters(), lr=lr)) as (fmodel, diffopt):
        for _ in range(K):
            diffopt.step(lower_loss({"u": u}, {"W": fmodel.weight.T, "b": fmodel.bias}))
        (g_higher,) = torch.autograd.grad(upper_loss({"u": u}, {"W": fmodel.weight.T, "b": fmodel.bias}), u)
print(f"unrolled vs higher: relative difference {relative(g_unrolled, g_higher):.2e}")
assert relative(g_unrolled, g_higher) < 1e-8

# %% [markdown]
# ## Learning the penalties
#
# Each outer step warm-starts the inner problem from the previous solution (fewer inner steps are
# then enough) and takes one Adam step on u with the implicit hypergradient.

# %%
u = u0.clone().requires_grad_()
adam = torch.optim.Adam([u], lr=0.2)
lower = {k: v.clone() for k, v in w0.items()}
history = []
for step in range(outer_steps):
    grads, lower = hypergradient({"u": u}, lower, lower_loss, upper_loss, "implicit-cg",
                                 steps=300 if step == 0 else 50, lr=0.5, cg_iters=100, tol=1e-10)
    lower = {k: v.detach() for k, v in lower.items()}
    history.append(float(upper_loss({"u": u}, lower)))
    adam.zero_grad()
    u.grad = grads["u"]
    adam.step()
accuracy = float(((X[te] @ lower["W"] + lower["b"]).argmax(1) == y[te]).double().mean())
print(f"validation loss {history[0]:.4f} -> {history[-1]:.4f}; test accuracy {accuracy:.3f}")
assert history[-1] < history[0]

# %%
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
ax1.plot(range(1, len(history) + 1), history, marker=".")
ax1.set(xlabel="outer step", ylabel="validation cross-entropy", title="Learning per-feature weight decay")
ax2.imshow(u.detach().reshape(8, 8).numpy(), cmap="viridis")
ax2.set(title="learned log penalty u per pixel", xticks=[], yticks=[])
fig.tight_layout()
fig.savefig(work / "validation_loss.png", dpi=100)
print("wrote", work / "validation_loss.png")
