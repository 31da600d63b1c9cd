//! Checkpoints of containers the direct engine restored.
