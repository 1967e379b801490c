"""Input pipelines: readers, bad-data handling, augmentation, the synthetic dataset."""
