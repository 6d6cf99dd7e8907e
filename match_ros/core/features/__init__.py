"""Local features and matchers behind one interface (``matcher.Matcher``, ``matcher.build_matcher``)."""

# every node's and tool's default backend (ros.matcher_params.matcher_spec, tools.build_map): a map built with the
# defaults loads in a relocalizer started with its defaults. Here, not in matcher.py, so that a tool's --help needs
# no torch.
DEFAULT_MATCHER = "xfeat_lighterglue"
DEFAULT_MAX_KEYPOINTS = 1024  # keypoints per image of every node and tool (a backend built alone keeps its own)
