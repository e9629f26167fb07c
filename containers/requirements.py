"""Print the pinned requirements of pyproject.toml for the given extras (image builds install these first,
in a cached layer, before the project's own code is copied in)."""

import sys
import tomllib

with open(sys.argv[1], "rb") as fh:
    project = tomllib.load(fh)["project"]
lines = list(project["dependencies"])
for extra in sys.argv[2:]:
    lines += project["optional-dependencies"][extra]
print("\n".join(lines))
