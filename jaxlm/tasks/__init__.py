"""Tasks: what a run optimises and measures. The one trainer takes a task; each task owns its model
head, its loss (sums and denominators, so micro-batches and hosts add up exactly), its metrics and its data."""
