"""Figure 5: the distillation loss and the student's k-NN probe accuracy on 2-D planes through three
networks, both of the paper's views:

- non-local: the teacher, the independent student's initialisation theta_S(1) and that student trained,
  theta*_S(1);
- shared: the teacher, the trained local student theta*_S(0) (alpha = 1e-10) and theta*_S(1).

A grid point is theta(x, y) = a + x u + y (|u| / |v|) v (``landscape.planes.plane_basis``: u = b - a,
v = c - a made orthogonal to u), coordinates in units of |b - a|; the loss at a point is the
cross-entropy H(p_teacher, p_theta) on a fixed batch of training images, the accuracy a k-NN (k=20)
probe of theta's embedding. The three points are marked.

    python -m analyses.planes --preset smoke|cpu|gpu|gpu-quick
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import xarray as xr

from analyses import common
from distill.schema import result_dataset

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": common.SMOKE(
        resolution=3, n_loss=50, n_probe=100, seed=0, cfg=dict(common.SMOKE_NET, probes=[], epochs=1)
    ),
    # Fashion-MNIST, 2,000 images, BN-free 4x32 ConvNet distilled 3 epochs; 9 x 9 grid; loss on 500 training
    # images, k-NN fitted on 1,000 training images and scored on 500 test images
    "cpu": common.Scale(subset=2000, n_test=500)(
        resolution=9, n_loss=500, n_probe=1000, seed=0, cfg=common.small_net(epochs=3, probes=[])
    ),
    # the paper's Figure 5 with VGG11 students of 150 epochs, fp32
    "gpu": common.Scale("cifar10", None, 2000)(
        resolution=21,
        n_loss=2000,
        n_probe=10_000,
        seed=0,
        cfg=dict(arch="vgg11", epochs=150, probes=[], device="auto", save_every=0, resume_every=1),
    ),
}
PRESETS["gpu-quick"] = common.variant(PRESETS["gpu"], cfg=dict(epochs=30, precision="bf16"))
PRESET_NOTES = {"gpu-quick": "students of 30 epochs instead of 150, bf16 autocast"}
VIEWS = {"non-local": ("teacher", "theta_S(1)", "theta*_S(1)"), "shared": ("teacher", "theta*_S(0)", "theta*_S(1)")}


def grid_values(
    models: dict[str, Any],
    names: tuple[str, str, str],
    teacher: Any,
    data: Any,
    pre: dict[str, Any],
    xs: np.ndarray,
    ys: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Loss (nats) and k-NN accuracy (fraction) over the grid (x, y), and the basis' norms/projection."""
    import copy

    import torch
    from torch.func import functional_call

    from distill.data import normalize
    from distill.probe import embed, knn_accuracy
    from landscape.planes import plane_basis

    a, b, c = (models[n] for n in names)
    # copies: every grid point is loaded into ``net`` below, and a module's state_dict() tensors are its own
    # parameters (loading into ``a`` itself moved the origin after each point and left the teacher changed)
    sa, sb, sc = ({k: t.detach().clone() for k, t in m.state_dict().items()} for m in (a, b, c))
    basis = plane_basis(sa, sb, sc)
    scale = basis["norm_u"] / basis["norm_v"]
    x_loss = normalize(data.train.images[: pre["n_loss"]], data.mean, data.std)
    with torch.no_grad():
        p_t = torch.log_softmax(teacher(x_loss), -1).exp()
    tr, ytr = data.train.images[: pre["n_probe"]], data.train.labels[: pre["n_probe"]]
    loss = np.zeros((len(xs), len(ys)))
    acc = np.zeros((len(xs), len(ys)))
    net = copy.deepcopy(a)
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            state = {
                k: (sa[k].double() + x * basis["u"][k] + y * scale * basis["v"][k]).to(sa[k].dtype)
                if k in basis["u"]
                else sa[k]
                for k in sa
            }
            with torch.no_grad():
                out = functional_call(net, state, (x_loss,))
                loss[i, j] = float(-(p_t * torch.log_softmax(out, -1)).sum(-1).mean())
                net.load_state_dict(state)
                f_tr = embed(net.backbone, tr, data.mean, data.std)
                f_te = embed(net.backbone, data.test.images, data.mean, data.std)
                acc[i, j] = knn_accuracy(f_tr, ytr, f_te, data.test.labels, k=20)
    return loss, acc, {"norm_u": basis["norm_u"], "norm_v": basis["norm_v"], "projection": basis["projection"]}


def compute(pre: dict[str, Any], ctx: common.Context) -> xr.Dataset:
    data = common.load(pre["dataset"], ctx, subset=pre["subset"], n_test=pre["n_test"])
    s = pre["seed"]
    base = common.run_config(ctx, pre["dataset"], pre["subset"], s, probe_seed=False, **pre["cfg"])
    alpha1 = base.replace(init="independent")
    local, indep = common.distil_all([(base, ctx.store("alpha0.rts")), (alpha1, ctx.store("alpha1.rts"))], ctx, data)
    teacher = local.teacher().eval()
    models = {
        "teacher": teacher,
        "theta_S(1)": indep.student(0).eval(),
        "theta*_S(1)": indep.student(-1).eval(),
        "theta*_S(0)": local.student(-1).eval(),
    }
    views = []
    n = pre["resolution"]
    for view, names in VIEWS.items():
        from landscape.planes import plane_basis

        basis = plane_basis(*(models[k].state_dict() for k in names))
        pts_x = np.array([0.0, 1.0, basis["projection"]])
        pts_y = np.array([0.0, 0.0, basis["norm_v"] / basis["norm_u"]])
        pad = 0.3 * max(np.ptp(pts_x), np.ptp(pts_y))
        xs = np.linspace(pts_x.min() - pad, pts_x.max() + pad, n)
        ys = np.linspace(pts_y.min() - pad, pts_y.max() + pad, n)
        loss, acc, info = grid_values(models, names, teacher, data, pre, xs, ys)
        data_vars = {"loss": (("x", "y"), loss), "accuracy": (("x", "y"), acc)}
        data_vars |= {"point_x": ("point", pts_x), "point_y": ("point", pts_y)}
        data_vars |= {"norm_u": ((), info["norm_u"]), "norm_v": ((), info["norm_v"])}
        coords = {"x": np.arange(n), "y": np.arange(n), "point": ["a", "b", "c"]}
        coords |= {"x_value": ("x", xs), "y_value": ("y", ys), "point_name": ("point", list(names))}
        views.append(result_dataset("analyses.planes", data_vars, coords).expand_dims(view=[view]))
        print(
            f"{view}: loss at a/b/c grid corners {loss.min():.4f}..{loss.max():.4f}, k-NN {100 * acc.min():.1f}.."
            f"{100 * acc.max():.1f} %",
            flush=True,
        )
    ds = xr.concat(views, "view", combine_attrs="drop_conflicts")
    ds.attrs = {
        "definition": "theta(x, y) = a + x u + y (|u|/|v|) v, u = b - a, v = (c - a) - <c - a, u>/<u, u> u",
        "loss_images": int(pre["n_loss"]),
        "probe_train_images": int(pre["n_probe"]),
        "probe_test_images": int(len(data.test)),
        **common.provenance(ctx, {"local": base, "independent": alpha1}, [s], "paper"),
    }
    return ds


def symbol(name: str) -> str:
    """A point's name as mathtext: ``theta*_S(1)`` -> ``$\\theta^*_S(1)$``; other names unchanged."""
    m = re.fullmatch(r"theta(\*?)_(\w+)\((\w+)\)", name)
    if not m:
        return name
    star, sub, arg = m.groups()
    return rf"$\theta{'^*' if star else ''}_{{{sub}}}({arg})$"


def plot(ds: xr.Dataset, path: Any) -> None:
    fig, axes = common.figure(2, ds.sizes["view"], width=4.4, height=3.6)
    scale = {"loss": 1, "accuracy": 100}
    # one colour range per quantity over both views, so equal colours mean equal values down each column
    levels = {var: common.shared_levels(ds[var].values * k) for var, k in scale.items()}
    for i, view in enumerate(ds.view.values):
        v = ds.sel(view=view)
        for j, (var, label, cmap) in enumerate(
            (("loss", "distillation loss [nats]", "viridis"), ("accuracy", "k-NN accuracy [%]", "magma"))
        ):
            ax = axes[2 * i + j]
            z = v[var].values.T * scale[var]
            cs = ax.contourf(v.x_value.values, v.y_value.values, z, levels=levels[var], cmap=cmap)
            fig.colorbar(cs, ax=ax, label=label)
            ax.set_aspect("equal")  # x and y are both in units of |b - a|: the plane's true geometry
            for k, marker, off in zip(range(3), ("*", "o", "s"), ((6, 6), (6, -14), (-30, 10))):
                ax.plot(float(v.point_x[k]), float(v.point_y[k]), marker, color="white", mec="black", ms=10)
                ax.annotate(
                    symbol(str(v.point_name.values[k])),
                    (float(v.point_x[k]), float(v.point_y[k])),
                    textcoords="offset points",
                    xytext=off,
                    color="white",
                    fontsize=8,
                    bbox=dict(boxstyle="round,pad=0.15", fc="black", alpha=0.5, lw=0),
                )
            ax.set(title=f"{view} view: {var}", xlabel="x [‖b − a‖]", ylabel="y [‖b − a‖]")
    title = "Figure 5: planes through the teacher and students in parameter space"
    common.finish(fig, path, common.title(ds, title))


main = common.script(__name__, PRESETS, compute, plot)
