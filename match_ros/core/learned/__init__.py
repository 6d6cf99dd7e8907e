"""Our trained matchers (CoAM-style and OmniGlue-style on XFeat keypoints), their training data and checkpoints."""
