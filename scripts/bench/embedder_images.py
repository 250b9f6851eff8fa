"""The embedder images side by side: size, cold start (podman run -> gRPC SERVING) and RSS after one request,
for the TF image and the slim ONNX image (FP32 and INT8), alternating in 2 rounds. Build them first:

    bash deploy/build_images.sh embedder          # and the slim one (deploy/docker/embedder-onnx.Dockerfile), e.g.
    podman --runtime runc build --format docker --isolation chroot --network host \\
        --build-arg BASE_IMAGE=localhost/polyhead/base:bookworm -f deploy/docker/embedder-onnx.Dockerfile \\
        --ignorefile deploy/docker/embedder-onnx.Dockerfile.dockerignore -t polyhead/embedder-onnx:0.1.0 .
    PYTHONPATH=. .venv/bin/python -m scripts.bench.embedder_images
"""
import subprocess
import time
from embedder.client import EmbedderClient

IMAGES = {"tf (polyhead/embedder)": ("localhost/polyhead/embedder:0.1.0", {}),
          "onnx fp32 (polyhead/embedder-onnx)": ("localhost/polyhead/embedder-onnx:0.1.0", {}),
          "onnx int8 (polyhead/embedder-onnx)": ("localhost/polyhead/embedder-onnx:0.1.0", {"POLYHEAD_EMBEDDER_PRECISION": "int8"})}
PODMAN = ["podman", "--runtime", "runc"]


def main() -> None:
    results = {k: [] for k in IMAGES}
    for rnd in range(2):
        for name, (image, env) in IMAGES.items():
            port = 50190
            cname = f"measure-{rnd}-{abs(hash(name)) % 10000}"
            envs = sum((["-e", f"{k}={v}"] for k, v in {"POLYHEAD_EMBEDDER_PORT": str(port), "POLYHEAD_EMBEDDER_METRICS_PORT": "9190", **env}.items()), [])
            t0 = time.monotonic()
            subprocess.run([*PODMAN, "run", "-d", "--rm", "--name", cname, "--network", "host", "--ulimit", "nofile=1024:1024",
                            "--ulimit", "nproc=1024:1024", *envs, image], check=True, capture_output=True)
            client = EmbedderClient(f"127.0.0.1:{port}", timeout_s=5)
            while True:
                try:
                    if client.health(timeout_s=1) == "SERVING":
                        break
                except Exception:  # noqa: BLE001 - not up yet: any error means keep polling
                    pass
                if time.monotonic() - t0 > 180:
                    raise SystemExit(f"{name} not serving")
                time.sleep(0.2)
            cold = time.monotonic() - t0
            client.embed(["warm up the model once"])  # one request, then RSS
            pid = subprocess.run([*PODMAN, "inspect", "--format", "{{.State.Pid}}", cname], capture_output=True, text=True).stdout.strip()
            rss = 0
            pids = [pid] + subprocess.run(["pgrep", "-P", pid], capture_output=True, text=True).stdout.split()
            for p in pids:
                for line in open(f"/proc/{p}/status"):
                    if line.startswith("VmRSS"):
                        rss += int(line.split()[1])
            results[name].append((cold, rss / 1024))
            print(f"round {rnd} {name}: SERVING after {cold:.1f} s, RSS {rss/1024:.0f} MiB", flush=True)
            subprocess.run([*PODMAN, "stop", "-t", "5", cname], capture_output=True)
            time.sleep(2)
    sizes = {}
    for name, (image, _) in IMAGES.items():
        sizes[name] = subprocess.run(["podman", "image", "inspect", "--format", "{{.Size}}", image], capture_output=True, text=True).stdout.strip()
    print("| image | size MB | cold start s (round 1 / 2) | RSS after one request, MiB (1 / 2) |")
    print("|---|---|---|---|")
    for name, runs in results.items():
        print(f"| {name} | {int(sizes[name]) / 1e6:,.0f} | {' / '.join(f'{c:.1f}' for c, _ in runs)} | {' / '.join(f'{r:.0f}' for _, r in runs)} |")


if __name__ == "__main__":
    main()
