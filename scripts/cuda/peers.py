"""Peers of the quantized matmul kernels, timed on the GPU machine in the
same run as `qmatmul_bench` (scripts/test-cuda.sh bench), and the table
that puts them side by side.

    python3 scripts/cuda/peers.py measure [--quick]   # writes $OUT/peers.jsonl
    python3 scripts/cuda/peers.py table OURS.jsonl PEERS.jsonl

`measure`: the read-bandwidth ceiling (a sum over a 4 GiB buffer), cuBLAS
fp16 (`x @ W.T`, f16 weights) and PyTorch's int4 kernel
(`torch._weight_int4pack_mm`, group 128) at the bench's shapes and M,
timed as the bench times ours: weights rotated through copies that are
4x the L2 cache together, 20 launches captured in a CUDA graph, median of
30 replays per launch.
"""
import json
import os
import sys


def bench(fn, reps=20, iters=30):
    import torch
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    st = torch.cuda.Stream()
    with torch.cuda.stream(st):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=st):
            for _ in range(reps):
                fn()
    torch.cuda.synchronize()
    for _ in range(3):
        g.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        a, b = torch.cuda.Event(True), torch.cuda.Event(True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) / reps)
    ts.sort()
    return ts[len(ts) // 2] * 1e3


def measure(quick):
    import torch
    torch.manual_seed(0)
    dev = "cuda"
    out = open(os.path.join(os.environ.get("OUT", "/tmp"), "peers.jsonl"), "w")

    def emit(**r):
        out.write(json.dumps(r) + "\n")
        out.flush()
        print(r, flush=True)

    big = torch.rand(1 << 30, device=dev)  # 4 GiB of f32
    us = bench(lambda: big.sum(), reps=5, iters=10)
    emit(kind="ceiling", us=us, tbs=big.numel() * 4 / us / 1e6, name=torch.cuda.get_device_name())
    del big
    l2 = 50 << 20
    shapes = [(14336, 4096), (28672, 8192)] if quick else [
        (6144, 4096), (4096, 4096), (14336, 4096), (4096, 14336),
        (10240, 8192), (8192, 8192), (28672, 8192), (8192, 28672)]
    ms = [1, 8] if quick else [1, 2, 4, 8, 16, 32, 64, 128, 512]
    for (N, K) in shapes:
        wb = N * K * 2
        wh = [torch.randn(N, K, device=dev).half() * 0.02
              for _ in range(max(1, min(8, -(-4 * l2 // wb))))]
        q = torch.randint(0, 16, (N, K), device=dev, dtype=torch.int32).to(torch.uint8)
        packed = (q[:, 1::2] << 4 | q[:, 0::2]).contiguous()
        tw = torch._convert_weight_to_int4pack(packed, 8)
        ib = N * K // 2 + N * (K // 128) * 4
        tws = [tw.clone() for _ in range(max(1, min(8, -(-4 * l2 // ib))))]
        sz = torch.zeros(K // 128, N, 2, device=dev, dtype=torch.bfloat16)
        sz[..., 0] = 0.01
        for M in ms:
            x = torch.randn(M, K, device=dev).half()
            j = [0]

            def g():
                j[0] = (j[0] + 1) % len(wh)
                return x @ wh[j[0]].T
            us = bench(g)
            emit(kind="cublas-fp16", N=N, K=K, M=M, us=us, bytes=wb)
            xb = x.to(torch.bfloat16)
            t = [0]

            def h():
                t[0] = (t[0] + 1) % len(tws)
                return torch._weight_int4pack_mm(xb, tws[t[0]], 128, sz)
            try:
                us = bench(h)
                emit(kind="torch-int4", N=N, K=K, M=M, us=us, bytes=ib)
            except Exception as e:  # a torch without the kernel
                print("torch int4 failed:", repr(e)[:200])
        del wh, tws


def table(ours_path, peers_path):
    ours = [json.loads(l) for l in open(ours_path)]
    peers = [json.loads(l) for l in open(peers_path)]
    ceil = next((p for p in peers if p["kind"] == "ceiling"), None)
    c = ceil["tbs"] if ceil else float("nan")
    if ceil:
        print(f"{ceil['name']}: read ceiling {c:.2f} TB/s (sum over 4 GiB)\n")
    by = {(p["kind"], p["N"], p["K"], p["M"]): p["us"] for p in peers if p["kind"] != "ceiling"}
    print("| N x K | M | format | kernel | us | TB/s | % ceiling | vs cuBLAS fp16 | vs torch int4 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for o in ours:
        key = (o["N"], o["K"], o["M"])
        tbs = o["bytes"] / o["us"] / 1e6
        cb = by.get(("cublas-fp16",) + key)
        ti = by.get(("torch-int4",) + key)
        r = lambda p: f"{p / o['us']:.2f}x" if p else "-"
        print(f"| {o['N']} x {o['K']} | {o['M']} | {o['format']} | {o.get('kernel', '')} | {o['us']:.1f} | {tbs:.2f} | "
              f"{100 * tbs / c:.0f}% | {r(cb)} | {r(ti)} |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["measure"]:
        measure("--quick" in sys.argv)
    elif sys.argv[1:2] == ["table"] and len(sys.argv) == 4:
        table(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
