"""Training: losses, augmentation, data loading and the training loops (uses models and extract)."""
