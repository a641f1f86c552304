"""``edgekit info``: what a checkpoint directory holds."""

from __future__ import annotations

from pathlib import Path

from edgekit.checkpoint import check_model_dir, load_config_of, read_meta


def model_info(path) -> dict:
    """Parameters, non-zeros, layers, vocabulary and bytes on disk of a checkpoint directory."""
    from safetensors import safe_open

    from edgekit.distill.adapters import model_shape

    p = check_model_dir(path)
    config = load_config_of(p)
    weights = p / "model.safetensors"
    params = nonzero = 0
    if weights.exists():
        seen = set()
        with safe_open(str(weights), framework="pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                key = (t.data_ptr(), t.numel()) if t.numel() else name
                if key in seen:
                    continue
                seen.add(key)
                params += t.numel()
                nonzero += int((t != 0).sum())
    try:
        layers, hidden, heads = model_shape(config)
    except Exception:
        layers = getattr(config, "num_hidden_layers", None)
        hidden = getattr(config, "hidden_size", None)
        heads = getattr(config, "num_attention_heads", None)
    files = [f for f in p.rglob("*") if f.is_file()]
    meta = read_meta(p)
    return {
        "path": str(p),
        "model_type": config.model_type,
        "layers": layers,
        "hidden_size": hidden,
        "attention_heads": heads,
        "embedding_size": getattr(config, "embedding_size", hidden),
        "shared_layers": config.model_type == "albert" and getattr(config, "num_hidden_groups", 1) == 1,
        "vocab_size": config.vocab_size,
        "parameters": params,
        "nonzero_parameters": nonzero,
        "sparsity": round(1 - nonzero / params, 4) if params else 0.0,
        "bytes_on_disk": sum(f.stat().st_size for f in files),
        "weights_bytes": weights.stat().st_size if weights.exists() else None,
        "edgekit": {k: meta[k] for k in ("kind", "stage", "teacher", "step") if k in meta},
    }


def format_info(info: dict) -> str:
    def human(n):
        for unit in ("", "K", "M", "G"):
            if abs(n) < 1000:
                return f"{n:.2f}{unit}" if unit else str(n)
            n /= 1000
        return f"{n:.2f}T"

    lines = [
        f"{info['path']}",
        f"  architecture      {info['model_type']}" + ("  (all layers share one set of weights)" if info["shared_layers"] else ""),
        f"  layers            {info['layers']}",
        f"  hidden / heads    {info['hidden_size']} / {info['attention_heads']}",
        f"  embedding size    {info['embedding_size']}",
        f"  vocabulary        {info['vocab_size']:,}",
        f"  parameters        {info['parameters']:,} ({human(info['parameters'])})",
        f"  non-zeros         {info['nonzero_parameters']:,} ({human(info['nonzero_parameters'])}, sparsity {info['sparsity']:.1%})",
        f"  bytes on disk     {info['bytes_on_disk']:,}",
    ]
    if info["edgekit"]:
        lines.append("  edgekit           " + ", ".join(f"{k}={v}" for k, v in info["edgekit"].items()))
    return "\n".join(lines)


__all__ = ["model_info", "format_info", "Path"]
