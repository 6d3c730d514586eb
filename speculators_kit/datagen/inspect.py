"""`speckit inspect STORE`: what a store holds, and (with --verify) whether every shard is intact."""

from __future__ import annotations

from speculators_kit.core.store import StoreReader


def describe_store(store_dir, verify: bool = False, show: int = 0) -> tuple[str, bool]:
    reader = StoreReader(store_dir)
    m = reader.manifest
    masked = sum(int(reader[i]["loss_mask"].sum()) for i in range(len(reader)))
    nbytes = sum(s.bytes for s in m.shards)
    lines = [
        f"store      {store_dir}",
        (f"target     {m.target_name} ({m.target_fingerprint}, {m.num_target_layers} layers, "
         f"hidden {m.hidden_size}, vocab {m.vocab_size})"),
        f"samples    {m.num_samples} in {len(m.shards)} shard(s)"
        + (" (unfinished: datagen is running or was stopped)" if m.complete is False else ""),
        f"tokens     {m.num_tokens} ({masked / max(m.num_tokens, 1):.1%} loss-masked)",
        f"layers     {m.layer_ids} (aux {m.aux_layer_ids}, last {m.layer_ids[-1]} pre-norm)",
        (f"dtype      {m.dtype}, {nbytes / max(m.num_tokens, 1):.0f} bytes/token, "
         f"{nbytes / 2**20:.1f} MiB"),
    ]
    ok = True
    if verify:
        problems = reader.verify()
        ok = not problems
        lines.append("verify     " + ("ok: every shard matches its sha256" if ok else
                                      "FAILED: " + "; ".join(problems)))
    for i in range(min(show, len(reader))):
        s = reader[i]
        lines.append(f"sample {i}: {len(s['token_ids'])} tokens, {int(s['loss_mask'].sum())} masked, "
                     f"ids {s['token_ids'][:16].tolist()}...")
    return "\n".join(lines), ok
