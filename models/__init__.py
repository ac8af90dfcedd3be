"""Everything learned: specs, the CQT front end, the skeleton, the three stages, the Performer, data, training."""
