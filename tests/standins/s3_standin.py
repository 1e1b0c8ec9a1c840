"""Test-only stand-in for MinIO's `minio` and `mc` commands, on SeaweedFS (s3.Dockerfile).

    minio server DIR [--console-address ADDR]   SeaweedFS (master, volume, filer, S3 on :9000) with data in DIR;
                                                MINIO_ROOT_USER/PASSWORD become its admin identity
    mc ready ALIAS                               0 once the server is up and its admin identity is in force
    mc mb [--ignore-existing] ALIAS/BUCKET
    mc cp [--recursive] SRC ALIAS/BUCKET/KEY     local file or folder into the bucket (a folder's content)
    mc ls [--recursive] ALIAS/BUCKET[/PREFIX]    one key a line
    mc cat ALIAS/BUCKET/KEY
    mc admin policy create ALIAS NAME FILE       kept until attached
    mc admin user add ALIAS USER SECRET
    mc admin policy attach ALIAS NAME --user USER

Aliases come from MC_HOST_<alias> (http://KEY:SECRET@HOST:PORT), as mc reads them; `local` defaults to the root
user on localhost:9000 (as in MinIO's image). A policy becomes SeaweedFS actions: s3:GetObject on BUCKET/PREFIX*
-> Read:BUCKET/PREFIX*, s3:PutObject/DeleteObject -> Write:..., s3:ListBucket on BUCKET -> List:BUCKET. SeaweedFS
cannot scope GetBucketLocation to a prefix: a user that may read only some prefixes cannot ask it (MinIO's
s3:GetBucketLocation in the hooks' policy has no equivalent here).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

STATE = Path(os.environ.get("MC_STANDIN_STATE", "/tmp/mc-standin"))
READY = Path("/tmp/s3-standin-ready")
WEED = "weed"
PORTS = {"master": 9333, "volume": 8080, "filer": 8888, "s3": 9000}
ACTIONS = {"s3:GetObject": "Read", "s3:PutObject": "Write", "s3:DeleteObject": "Write",
           "s3:AbortMultipartUpload": "Write", "s3:ListBucket": "List"}


def fail(message: str) -> None:
    print(f"mc: <ERROR> {message}", file=sys.stderr)
    sys.exit(1)


def alias(name: str) -> tuple[str, str, str]:
    """(host:port, access key, secret key) of an mc alias."""
    url = os.environ.get(f"MC_HOST_{name}")
    if url is None:
        if name != "local":
            fail(f"unknown alias {name}")
        return "localhost:9000", os.environ.get("MINIO_ROOT_USER", ""), os.environ.get("MINIO_ROOT_PASSWORD", "")
    parts = urllib.parse.urlsplit(url)
    return f"{parts.hostname}:{parts.port or 80}", urllib.parse.unquote(parts.username or ""), \
        urllib.parse.unquote(parts.password or "")


def client(name: str, key: str | None = None, secret: str | None = None):
    from minio import Minio

    endpoint, root_key, root_secret = alias(name)
    return Minio(endpoint, access_key=key or root_key, secret_key=secret or root_secret, secure=False,
                 region="us-east-1")


def target(path: str) -> tuple[str, str, str]:
    """ALIAS/BUCKET/KEY -> (alias, bucket, key)."""
    name, _, rest = path.partition("/")
    bucket, _, key = rest.partition("/")
    return name, bucket, key


def weed_shell(master: str, command: str) -> None:
    done = subprocess.run([WEED, "shell", f"-master={master}"], input=command + "\n", capture_output=True, text=True,
                          timeout=60)
    if done.returncode != 0 or "error" in done.stderr.lower():
        fail(f"weed shell {command.split()[0]}: {done.stdout[-2000:]}{done.stderr[-2000:]}")


def configure(master: str, user: str, secret: str, actions: list[str]) -> None:
    weed_shell(master, f"s3.configure -user={user} -access_key={user} -secret_key={secret} "
                       f"-actions={','.join(actions)} -apply")


def wait_allowed(probe, what: str, timeout: float = 60) -> None:
    """Until ``probe()`` passes: SeaweedFS's gateway takes the new identities from its filer within seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            probe()
            return
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            if time.monotonic() > deadline:
                fail(f"{what} not in force after {timeout:.0f} s: {exc}")
            time.sleep(0.5)


def server(args: list[str]) -> None:
    data = Path(args[0] if args else "/data")
    data.mkdir(parents=True, exist_ok=True)
    ip = socket.gethostbyname(socket.gethostname())  # advertised to mc's `weed shell` in other containers
    READY.unlink(missing_ok=True)
    proc = subprocess.Popen([WEED, "server", f"-dir={data}", f"-ip={ip}", "-ip.bind=0.0.0.0", "-filer", "-s3",
                             *(f"-{name}.port={port}" for name, port in PORTS.items() if name != "master"),
                             f"-master.port={PORTS['master']}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                             "-volume.max=0", "-master.volumeSizeLimitMB=64", "-volume.preStopSeconds=0",
                             "-master.telemetry=false"])
    root, secret = os.environ["MINIO_ROOT_USER"], os.environ["MINIO_ROOT_PASSWORD"]
    root_client = client("local", root, secret)
    wait_allowed(lambda: subprocess.run([WEED, "shell", f"-master=localhost:{PORTS['master']}"],
                                        input="s3.configure -user=root -access_key=" + root + " -secret_key=" +
                                        secret + " -actions=Admin -apply\n", capture_output=True, text=True,
                                        timeout=30, check=True) and root_client.list_buckets(), "the root user", 120)
    READY.touch()
    sys.exit(proc.wait())


def ready(args: list[str]) -> None:
    if not READY.exists():
        fail("not ready")
    client(args[0] if args else "local").list_buckets()


def make_bucket(args: list[str]) -> None:
    name, bucket, _ = target([a for a in args if not a.startswith("--")][0])
    c = client(name)
    if c.bucket_exists(bucket):
        if "--ignore-existing" not in args and "-p" not in args:
            fail(f"bucket {bucket} exists")
    else:
        c.make_bucket(bucket)
    print(f"Bucket created successfully `{name}/{bucket}`.")


def copy(args: list[str]) -> None:
    src, dst = [a for a in args if not a.startswith("--")]
    name, bucket, key = target(dst)
    c = client(name)
    source = Path(src)
    if source.is_dir():
        if "--recursive" not in args and "-r" not in args:
            fail(f"{src} is a folder: give --recursive")
        files = sorted(p for p in source.rglob("*") if p.is_file())
        for path in files:
            c.fput_object(bucket, key.rstrip("/") + "/" + path.relative_to(source).as_posix(), str(path))
    else:
        c.fput_object(bucket, key + source.name if key.endswith("/") or not key else key, str(source))


def listing(args: list[str]) -> None:
    name, bucket, prefix = target([a for a in args if not a.startswith("--")][0])
    for obj in client(name).list_objects(bucket, prefix=prefix or None, recursive="--recursive" in args):
        print(obj.object_name)


def cat(args: list[str]) -> None:
    name, bucket, key = target(args[0])
    sys.stdout.buffer.write(client(name).get_object(bucket, key).read())


def policy_actions(policy: dict) -> list[str]:
    """SeaweedFS actions for a MinIO policy. GetBucketLocation needs SeaweedFS's Read on the whole bucket: given only
    where the policy reads every key of that bucket anyway."""
    actions = set()
    for statement in policy["Statement"]:
        if statement.get("Effect") != "Allow":
            continue
        for action in statement["Action"]:
            for resource in statement["Resource"]:
                if action in ACTIONS:
                    actions.add(f"{ACTIONS[action]}:{resource.removeprefix('arn:aws:s3:::')}")
    whole = {a.removeprefix("Read:").removesuffix("/*") for a in actions if a.startswith("Read:") and
             a.endswith("/*") and a.count("/") == 1}
    return sorted(actions | {f"Read:{bucket}" for bucket in whole})


def admin(args: list[str]) -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    match args:
        case ["policy", "create", _, policy, path]:
            (STATE / f"policy-{policy}.json").write_text(Path(path).read_text())
        case ["user", "add", _, user, secret]:
            (STATE / f"user-{user}").write_text(secret)
        case ["policy", "attach", name, policy, "--user", user]:
            actions = policy_actions(json.loads((STATE / f"policy-{policy}.json").read_text()))
            secret = (STATE / f"user-{user}").read_text()
            host = alias(name)[0].rsplit(":", 1)[0]
            configure(f"{host}:{PORTS['master']}", user, secret, actions)
            buckets = {a.split(":", 1)[1] for a in actions if a.startswith("List:")}
            user_client = client(name, user, secret)
            for bucket in buckets:
                wait_allowed(lambda: next(iter(user_client.list_objects(bucket)), None), f"user {user}")
        case _:
            fail(f"admin {' '.join(args[:2])}: not in this stand-in")


def main(argv: list[str]) -> None:
    program, *args = argv
    if program == "minio":
        if not args or args[0] != "server":
            fail("usage: minio server DIR")
        return server(args[1:])
    commands = {"ready": ready, "mb": make_bucket, "cp": copy, "ls": listing, "cat": cat, "admin": admin}
    if not args or args[0] not in commands:
        fail(f"mc {args[:1]}: not in this stand-in ({', '.join(commands)})")
    commands[args[0]](args[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
