"""Write or check the nodes' parameter files (config/*.yaml), generated from the parameter specs.

    python -m match_ros.tools.config_files --write config   # regenerate the shipped files
    python -m match_ros.tools.config_files --check config   # exit 1 when one differs from the specs
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from match_ros.ros.params import config_yaml


def shipped_configs() -> dict:
    """{file name: YAML text} of the nodes' parameter files."""
    from match_ros.nodes import keyframe_matcher, map_builder, relocalizer, visual_odometry

    header = ("{0}\nParameters with their defaults, generated from the parameter specs by\n"
              "`python -m match_ros.tools.config_files --write config`: a copy of this file configures a robot\n"
              "(launch argument params_file); `ros2 param describe` shows the same descriptions.")
    return {f"{m.NODE_NAME}.yaml": config_yaml(m.NODE_NAME, m.parameter_groups(),
                                               header.format(m.__doc__.split("\n")[0]))
            for m in (keyframe_matcher, relocalizer, map_builder, visual_odometry)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write", metavar="DIR", help="write the files into DIR")
    ap.add_argument("--check", metavar="DIR", help="exit 1 when a file in DIR differs from the specs")
    args = ap.parse_args(argv)
    bad = 0
    for name, text in shipped_configs().items():
        if args.write:
            (Path(args.write) / name).write_text(text)
        if args.check and (Path(args.check) / name).read_text() != text:
            print(f"{Path(args.check) / name} differs from the parameter specs", file=sys.stderr)
            bad = 1
        if not (args.write or args.check):
            print(f"--- {name}\n{text}")
    return bad


if __name__ == "__main__":
    sys.exit(main())
