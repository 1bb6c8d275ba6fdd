"""The Ray actor a cluster's feature-cache fill runs on each GPU (`orchestrator.run.fill_cluster`)."""

from __future__ import annotations

from pathlib import Path

from trainables import data
from trainables.features.cache import FeatureCache

from orchestrator.family import named
from orchestrator.run.entries import Entry


class ShardEncoder:
    """A Ray actor on one GPU (or none, where asked): encodes shards of cache entries and joins them.
    Backbones, datasets and each entry's image loader (its decoding workers) are made once per actor."""

    def __init__(self, cache_dir: Path, data_dir: Path, workers: int, batch_size: int, device: str, augmentation: str):
        import ray

        from trainables.devices import trial_device

        # A GPU Ray gave this actor that torch cannot use is a one-line error, not a fill on the CPU.
        self.device = trial_device(device, len(ray.get_gpu_ids()), who="feature-cache actor")
        self.cache = FeatureCache(cache_dir, augmentation=augmentation)
        self.cache_dir = cache_dir
        self.data_dir = data_dir
        self.workers = workers
        self.batch_size = batch_size
        self.node_id = ray.get_runtime_context().get_node_id()
        self._backbones: dict[str, object] = {}  # by the backbone config's JSON
        self._datasets: dict[str, data.MultiLabelDataset] = {}  # by `Entry.dataset_key`
        self._loaders: dict[str, object] = {}  # by `Entry.key`

    def ready(self) -> str:
        """This actor's node id, once it has been placed and started."""
        return self.node_id

    def _open(self, entry: Entry):
        from trainables.backbone.weights import load_backbone

        backbone, dataset = entry.backbone.model_dump_json(), entry.dataset_key
        if backbone not in self._backbones:
            self._backbones[backbone] = load_backbone(entry.backbone, self.data_dir, self.device)
        if dataset not in self._datasets:
            self._datasets[dataset] = entry.open(self.data_dir)
        return self._backbones[backbone], self._datasets[dataset]

    def plan(self, entry: Entry) -> list[int]:
        """The number of images of each shard of `entry` that no process has stored (0 for stored ones)."""
        clip, dataset = self._open(entry)
        key = self.cache.key(clip, dataset, entry.view, entry.encoding)
        missing = self.cache.missing_shards(key, len(dataset))
        return [len(rows) if i in missing else 0 for i, rows in enumerate(self.cache.shards(len(dataset)))]

    def encode(self, entry: Entry, index: int) -> str:
        """Encode shard `index` of `entry` (unless another process stored it); this actor's node id."""
        clip, dataset = self._open(entry)
        if entry.key not in self._loaders:
            self._loaders[entry.key] = self.cache.entry_loader(clip, dataset, entry.view, self.batch_size, self.workers)
        self.cache.encode_shard(clip, dataset, entry.view, index, encoding=entry.encoding, images=self._loaders[entry.key])
        return self.node_id

    def decode(self, family: str, dataset, split: str, size: int) -> None:
        """Build the decoded store of a family's image set (`Family.decoded_sets`), unless a process has."""
        from trainables.features.decoded import DecodedStore


        images = named(family).open_cached_set(dataset, split, self.data_dir)
        DecodedStore(self.cache_dir).images(images, size, self.workers)

    def assemble(self, entry: Entry) -> None:
        """Join `entry`'s shards into the cache entry (raising for unreadable images its dataset
        does not skip, as a trial reading it would)."""
        clip, dataset = self._open(entry)
        self.cache.dense_features(clip, dataset, entry.view, encoding=entry.encoding)
