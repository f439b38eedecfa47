"""`aimactl watch`: the live dashboard, in three layers.

- `model`: pure view model. `dashboard(observed, plan, events, ...)` turns one observation, the Plan that
  `aimactl plan` would print, and the last events into rows (hosts, GPUs, Services and Apps, Models, events).
  No terminal, clock or client: it is tested table-driven.
- `render`: rich renderables for a `Dashboard` that fit the console width (rich imported inside functions).
- `live`: the effects: observing and planning each interval, reading events from the state store, and the
  terminal loop (rich Live, keys read in cbreak mode, `q` or Ctrl-C quits).
"""
