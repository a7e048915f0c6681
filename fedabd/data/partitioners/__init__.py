"""One module per partitioner; each registers itself in :data:`fedabd.data.partition.PARTITIONERS`."""
