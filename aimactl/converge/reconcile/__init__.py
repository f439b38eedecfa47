"""`aimactl reconcile`: the self-healing GitOps loop (specs/reconcile.md).

- `loop`: the Reconciler (passes, sleeping, watchers);
- `passes`: one pass (observe, plan, choose, apply under the lock, record);
- `backoff`: which changes a pass acts on, per-resource backoff and Stalled (pure);
- `events`: Docker events and native process polling that wake the loop;
- `gitsource`: manifests from a directory or a git branch;
- `metrics`: Prometheus text over HTTP.
"""
