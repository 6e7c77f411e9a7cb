"""On the GPU machine: make a site folder hold the packed distributions this interpreter lacks.

``pack.py`` unpacked each wheel as ``opt/<dist>/`` of its archive. A distribution is copied into ``SITE`` (which goes
first on ``PYTHONPATH``) when the device does not have it, when its version there does not satisfy what another
packed distribution requires of it, or when it must be ours whatever the device has (``numpy<2``: the Triton 2.51
stub mishandles BYTES tensors under numpy 2). Everything else stays the device's own build. Standard library and
``packaging`` only (the device has both).

usage: python3 install_pack.py SITE OPT [OPT...]   (prints what it chose as JSON)
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import re
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ALWAYS_OURS = frozenset({"numpy", "protobuf", "typing_extensions"})
# Extras our code uses of packed distributions: their requirements count too.
USED_EXTRAS = {"tritonclient": ("grpc",), "uvicorn": ()}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


@dataclass
class PackedDist:
    name: str
    version: str
    requires: list[str] = field(default_factory=list)


def read_packed(opts: list[Path]) -> dict[str, tuple[PackedDist, Path]]:
    """Name, version and ``Requires-Dist`` of each unpacked wheel under the ``opt`` folders, with its folder."""
    found = {}
    for opt in opts:
        for folder in sorted(p for p in opt.iterdir() if p.is_dir()):
            for info in folder.glob("*.dist-info/METADATA"):
                text = info.read_text(errors="replace")
                name = re.search(r"^Name: (.+)$", text, re.M).group(1).strip()
                version = re.search(r"^Version: (.+)$", text, re.M).group(1).strip()
                requires = [m.strip() for m in re.findall(r"^Requires-Dist: (.+)$", text, re.M)]
                found[canonical(folder.name)] = (PackedDist(name, version, requires), folder)
    return found


def installed_versions(names) -> dict[str, str | None]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def choose(
    packed: Mapping[str, PackedDist], installed: Mapping[str, str | None], always: frozenset[str] = ALWAYS_OURS
) -> dict[str, str]:
    """Packed dist → why it is installed from the pack (dists absent from the result stay the device's)."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.version import InvalidVersion, Version

    chosen: dict[str, str] = {}
    for name in packed:
        if name in always:
            chosen[name] = "always ours"
        elif installed.get(name) is None:
            chosen[name] = "missing on the device"
    changed = True
    while changed:  # a dist taken from the pack may require newer versions of others
        changed = False
        for owner, dist in packed.items():
            if owner not in chosen:
                continue
            extras = USED_EXTRAS.get(owner, ())
            for line in dist.requires:
                try:
                    requirement = Requirement(line)
                except InvalidRequirement:
                    continue
                target = canonical(requirement.name)
                if target not in packed or target in chosen:
                    continue
                if requirement.marker is not None:
                    environments = [{"extra": extra} for extra in extras] or [{"extra": ""}]
                    if not any(requirement.marker.evaluate(env) for env in environments):
                        continue
                have = installed.get(target)
                try:
                    ok = have is not None and requirement.specifier.contains(Version(have), prereleases=True)
                except InvalidVersion:
                    ok = False
                if not ok:
                    chosen[target] = f"{owner} requires {requirement.specifier or 'it'}, device has {have}"
                    changed = True
    return chosen


def install(site: Path, opts: list[Path]) -> dict:
    site.mkdir(parents=True, exist_ok=True)
    found = read_packed(opts)
    packed = {name: dist for name, (dist, _) in found.items()}
    installed = installed_versions(packed)
    chosen = choose(packed, installed)
    for name in chosen:
        shutil.copytree(found[name][1], site, dirs_exist_ok=True)
    return {
        "from_pack": {name: f"{packed[name].version} ({why})" for name, why in sorted(chosen.items())},
        "from_device": {name: installed[name] for name in sorted(packed) if name not in chosen},
    }


if __name__ == "__main__":
    report = install(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]])
    print(json.dumps(report, indent=1))
