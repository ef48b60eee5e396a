"""Thinking-token latent analysis (LaRA-VLA Fig. 6, §4.3): do the latent CoT components stay distinct?

LaRA replaces each CoT component (subtask, bbox, reasoning) by one continuous thinking token. If the
curriculum works, the final-layer states of those tokens occupy separate regions (Fig. 6 shows three clusters
under t-SNE); if the latents collapse, the components become indistinguishable. We collect
`sample_actions(..., mode="latent").thinking_latents` (B, K, D) over dataset frames, label each of the K
vectors by its component, project to 2-D (PCA by numpy SVD, or t-SNE from scikit-learn) and score separation
in the full D-dim space — the projection is for the eye, the score is not an artefact of it:

    silhouette           mean over points of (b - a) / max(a, b), a = mean distance to the own component,
                         b = smallest mean distance to another component; 1 = tight and separated, ~0 = mixed
    centroid_accuracy    leave-one-out nearest-centroid classification accuracy of the component label

Read the score against the untrained baseline: each thinking token sits at its own position (RoPE) after a
different prefix, so even a random-init `lara` scores well above 0 (silhouette ~0.5 on synthetic data). The
collapse LaRA warns about shows up as a *drop* from that baseline after training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

METHODS = ("pca", "tsne")


def collect_thinking_latents(
    policy: Any, dataset: Any, max_samples: int = 512, batch_size: int = 32, seed: int = 0
) -> tuple[np.ndarray, list[str]]:
    """(N, K, D) thinking latents for up to `max_samples` dataset frames (evenly spread) and the K names."""
    import torch
    from torch.utils.data import DataLoader, Subset

    model = policy.model
    components = list(model.final.latent_components)
    if not components:
        raise ValueError(
            f"this checkpoint (preset {policy.config.preset!r}) has no thinking tokens: its final curriculum stage "
            "latentises no CoT component. Analyse a LaRA checkpoint (presets lara, lara-latent-text, lara-rd)."
        )
    if max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples}")
    n = min(max_samples, len(dataset))
    idx = np.unique(np.linspace(0, len(dataset) - 1, n).round().astype(int)).tolist()
    loader = DataLoader(Subset(dataset, idx), batch_size=batch_size, shuffle=False)
    gen = torch.Generator(device=policy.device).manual_seed(seed)
    out = []
    policy.eval()
    for batch in loader:
        batch = {k: v.to(policy.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        res = model.sample_actions(batch, mode="latent", generator=gen)
        if res.thinking_latents is None:
            raise RuntimeError(
                "sample_actions(mode='latent') returned no thinking_latents for a model with thinking tokens"
            )
        out.append(res.thinking_latents.float().cpu().numpy())
    latents = np.concatenate(out)
    if latents.shape[1] != len(components):
        raise RuntimeError(f"expected {len(components)} thinking latents per sample, got {latents.shape[1]}")
    return latents, components


def pca_2d(points: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, 2) principal-component scores (numpy SVD of the centred data)."""
    x = points - points.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    proj = x @ vt[:2].T
    return np.pad(proj, ((0, 0), (0, 2 - proj.shape[1])))  # D == 1 edge case


def tsne_2d(points: np.ndarray, seed: int = 0) -> np.ndarray:
    try:
        from sklearn.manifold import TSNE
    except ImportError as e:
        raise ImportError(f't-SNE needs scikit-learn: pip install -e ".[dev]" (or use --method pca) ({e})') from e
    perplexity = float(max(2.0, min(30.0, (len(points) - 1) / 3)))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points)


def silhouette(points: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette coefficient (Euclidean); points in singleton clusters count 0, as in scikit-learn."""
    sq = (points**2).sum(1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * points @ points.T, 0.0))
    names = np.unique(labels)
    if len(names) < 2:
        raise ValueError("the silhouette needs at least two groups")
    member = labels[None, :] == names[:, None]  # (C, N)
    sums = member.astype(np.float64) @ dist  # (C, N): summed distance from each point to each group
    counts = member.sum(1, keepdims=True).astype(np.float64)
    own = member.argmax(0)  # each point's group index
    n_own = counts[own, 0]
    a = np.where(n_own > 1, sums[own, np.arange(len(labels))] / np.maximum(n_own - 1, 1), 0.0)
    mean_other = sums / counts
    mean_other[own, np.arange(len(labels))] = np.inf
    b = mean_other.min(0)
    s = np.where(n_own > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
    return float(s.mean())


def centroid_accuracy(points: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out nearest-centroid accuracy of the group label."""
    names = np.unique(labels)
    member = labels[None, :] == names[:, None]
    counts = member.sum(1).astype(np.float64)
    sums = member.astype(np.float64) @ points  # (C, D)
    own = member.argmax(0)
    correct = 0
    for i, x in enumerate(points):
        cents = sums.copy()
        c = counts.copy()
        cents[own[i]] -= x  # leave the point out of its own centroid
        c[own[i]] -= 1
        valid = c > 0
        d = np.where(valid, ((cents / np.maximum(c, 1)[:, None] - x) ** 2).sum(1), np.inf)
        correct += int(d.argmin() == own[i])
    return correct / len(points)


def plot_latents(xy: np.ndarray, labels: np.ndarray, path: str | Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.2))
    for i, name in enumerate(dict.fromkeys(labels.tolist())):
        sel = labels == name
        ax.scatter(xy[sel, 0], xy[sel, 1], s=10, alpha=0.7, color=f"C{i}", label=f"{name} ({sel.sum()})")
    ax.legend(fontsize=8, markerscale=1.5)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def analyze_latents(
    run_dir: str | Path,
    dataset_dir: str | Path,
    out: str | Path,
    *,
    max_samples: int = 512,
    method: str = "pca",
    seed: int = 0,
    batch_size: int = 32,
) -> dict:
    """Plot thinking latents by CoT component to `out` (PNG) and write the scores to `out` with a .json suffix."""
    import torch

    from latentvla.data.dataset import VLADataset
    from latentvla.policy import Policy

    if method not in METHODS:
        from latentvla.registry import did_you_mean

        raise ValueError(did_you_mean(method, METHODS, "projection method"))
    torch.manual_seed(seed)
    policy = Policy.from_pretrained(run_dir)
    c = policy.config
    dataset = VLADataset(dataset_dir, chunk_size=c.horizon, cameras=list(c.cameras), normalizer=policy.normalizer)
    latents, components = collect_thinking_latents(policy, dataset, max_samples, batch_size, seed)
    n, k, d = latents.shape
    points = latents.reshape(n * k, d).astype(np.float64)
    labels = np.tile(np.array(components), n)
    scores = {"silhouette": None, "centroid_accuracy": None}
    if k >= 2:
        scores = {"silhouette": silhouette(points, labels), "centroid_accuracy": centroid_accuracy(points, labels)}
    xy = pca_2d(points) if method == "pca" else tsne_2d(points, seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sil = "n/a (one component)" if scores["silhouette"] is None else f"{scores['silhouette']:.3f}"
    plot_latents(xy, labels, out, f"thinking latents ({method.upper()}, {c.preset}); silhouette {sil}")
    result = {
        "run": str(run_dir),
        "dataset": str(dataset_dir),
        "method": method,
        "n_samples": n,
        "components": components,
        "dim": d,
        **scores,
        "plot": str(out),
    }
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    return result
