"""What the frozen encoders produce, computed once and read by every trial.

`encoding` (what an entry holds: its view and encoding, and the loader that decodes its images),
`reading` (where an entry lives, its key, whether it can be trusted) and `cache` (`FeatureCache`:
encoding entries shard by shard under locks, then reading them), `fill` (every entry a trial reads,
filled ahead of a run), `rows` (`FeatureRows`: a trial's cached features on its device, resident or
streamed), `decoded` (the online mode's images decoded and resized once).
"""
