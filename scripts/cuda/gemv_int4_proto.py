"""Prototype for the CUDA backend (issue 13), run on the GPU machine with PyTorch:
int4 g128 symmetric GEMV (M = 1..8), f16 activations, f32 accumulation.
Checked against a float64 reference of the dequantized weights; timed against
cuBLAS fp16 and torch._weight_int4pack_mm with weights rotated past L2."""
import os, sys, json, torch
from torch.utils.cpp_extension import load_inline

SRC = r'''
#include <cuda_fp16.h>
#include <torch/extension.h>
#include <cuda_runtime.h>
#include <ATen/cuda/CUDAContext.h>

// W: [N][K/8] uint32, 8 nibbles per word, nibble order v0@0 v2@4 v4@8 v6@12 v1@16 v3@20 v5@24 v7@28
// so that (w >> 4i) & 0x000F000F | 0x64006400 is half2(1024 + v_{2i}, 1024 + v_{2i+1}).
// S: [N][K/128] half scales; value = (v - 8) * s.
// One warp per output row; lane l reads 16 bytes (32 values) per step: consecutive lanes, consecutive
// 16-byte chunks (coalesced). Four lanes share one group of 128.
template <int M, int ROWS_PER_WARP, bool PF>
__global__ void __launch_bounds__(128) gemv_int4(const uint4* __restrict__ W, const half* __restrict__ S,
    const half* __restrict__ X, half* __restrict__ Y, int N, int K) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row0 = (blockIdx.x * 4 + warp) * ROWS_PER_WARP;
  const int kw = K / 32;  // uint4 per row
  const int ng = K / 128;
  float acc[ROWS_PER_WARP][M];
#pragma unroll
  for (int r = 0; r < ROWS_PER_WARP; r++)
#pragma unroll
    for (int m = 0; m < M; m++) acc[r][m] = 0.f;
  // PF: the next step's codes and scales are loaded before this step's
  // arithmetic (two 16-byte loads per lane and row in flight).
  uint4 wn[ROWS_PER_WARP];
  half sn[ROWS_PER_WARP];
  if (PF && lane < kw) {
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; r++) {
      int row = min(row0 + r, N - 1);
      wn[r] = __ldcs(W + (size_t)row * kw + lane);
      sn[r] = S[(size_t)row * ng + lane / 4];
    }
  }
  for (int c = lane; c < kw; c += 32) {
    uint4 w[ROWS_PER_WARP];
    half s[ROWS_PER_WARP];
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; r++) {
      int row = min(row0 + r, N - 1);
      if (PF) {
        w[r] = wn[r];
        s[r] = sn[r];
        if (c + 32 < kw) {
          wn[r] = __ldcs(W + (size_t)row * kw + c + 32);
          sn[r] = S[(size_t)row * ng + (c + 32) / 4];
        }
      } else {
        w[r] = __ldcs(W + (size_t)row * kw + c);
        s[r] = S[(size_t)row * ng + c / 4];
      }
    }
    // Decode every row's 32 codes once: v = q - 8 as half2 pairs.
    half2 v[ROWS_PER_WARP][16];
    float sc[ROWS_PER_WARP];
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; r++) {
      const uint32_t ws[4] = {w[r].x, w[r].y, w[r].z, w[r].w};
#pragma unroll
      for (int j = 0; j < 4; j++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
          uint32_t q = ((ws[j] >> (4 * i)) & 0x000F000Fu) | 0x64006400u;
          v[r][j * 4 + i] = __hsub2(*reinterpret_cast<half2*>(&q), __float2half2_rn(1032.f));
        }
      sc[r] = __half2float(s[r]);
    }
    // Each activation row is loaded once and used by every weight row.
#pragma unroll
    for (int m = 0; m < M; m++) {
      const uint4* xp = reinterpret_cast<const uint4*>(X + (size_t)m * K + c * 32);
      uint4 xv[4] = {__ldg(xp), __ldg(xp + 1), __ldg(xp + 2), __ldg(xp + 3)};
      const half2* x2 = reinterpret_cast<const half2*>(xv);
#pragma unroll
      for (int r = 0; r < ROWS_PER_WARP; r++) {
        float2 part = make_float2(0.f, 0.f);
#pragma unroll
        for (int j = 0; j < 4; j++) {
          half2 hacc = __hmul2(v[r][j * 4], x2[j * 4]);
#pragma unroll
          for (int i = 1; i < 4; i++) hacc = __hfma2(v[r][j * 4 + i], x2[j * 4 + i], hacc);
          float2 f = __half22float2(hacc);
          part.x += f.x; part.y += f.y;
        }
        acc[r][m] += (part.x + part.y) * sc[r];
      }
    }
  }
#pragma unroll
  for (int r = 0; r < ROWS_PER_WARP; r++)
#pragma unroll
    for (int m = 0; m < M; m++) {
      float v = acc[r][m];
#pragma unroll
      for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
      if (lane == 0 && row0 + r < N) Y[(size_t)m * N + row0 + r] = __float2half(v);
    }
}

void run(torch::Tensor W, torch::Tensor S, torch::Tensor X, torch::Tensor Y, int rpw) {
  int N = W.size(0), K = W.size(1) * 8, M = X.size(0);
  int rows_per_block = 4 * (rpw % 10);
  dim3 grid((N + rows_per_block - 1) / rows_per_block);
  auto w = reinterpret_cast<const uint4*>(W.data_ptr<int>());
  auto s = reinterpret_cast<const half*>(S.data_ptr<at::Half>());
  auto x = reinterpret_cast<const half*>(X.data_ptr<at::Half>());
  auto y = reinterpret_cast<half*>(Y.data_ptr<at::Half>());
  auto st = at::cuda::getCurrentCUDAStream();
#define L(MM, R, P) gemv_int4<MM, R, P><<<grid, 128, 0, st>>>(w, s, x, y, N, K)
#define MS(R, P) switch (M) { case 1: L(1, R, P); break; case 2: L(2, R, P); break; case 4: L(4, R, P); break; default: L(8, R, P); }
  int pf = rpw >= 10; rpw %= 10;
  if (pf) { if (rpw == 1) { MS(1, true) } else if (rpw == 2) { MS(2, true) } else { MS(4, true) } }
  else { if (rpw == 1) { MS(1, false) } else if (rpw == 2) { MS(2, false) } else { MS(4, false) } }
  cudaError_t e = cudaGetLastError(); TORCH_CHECK(e == cudaSuccess, cudaGetErrorString(e));
}
'''
CPP = "void run(torch::Tensor W, torch::Tensor S, torch::Tensor X, torch::Tensor Y, int rpw);"
ext = load_inline("gemv_int4_proto", cpp_sources=CPP, cuda_sources=SRC, functions=["run"],
                  extra_cuda_cflags=["-O3", "-gencode=arch=compute_90,code=sm_90", "-Xptxas=-v", "--use_fast_math"], verbose=False)

PERM = [0, 2, 4, 6, 1, 3, 5, 7]  # nibble slot i holds value PERM[i]
def pack(q):  # q: [N, K] int in 0..15 -> [N, K/8] int32
    N, K = q.shape
    q = q.view(N, K // 8, 8).to(torch.int64)
    w = torch.zeros(N, K // 8, dtype=torch.int64, device=q.device)
    for slot, v in enumerate(PERM):
        w |= q[:, :, v] << (4 * slot)
    return w.to(torch.int32) if False else ((w + 2**31) % 2**32 - 2**31).to(torch.int32)

def bench(fn, reps=20, iters=30):
    """Median per-launch time (us) of `reps` launches captured in one CUDA graph."""
    for _ in range(3): fn()
    torch.cuda.synchronize()
    st = torch.cuda.Stream()
    with torch.cuda.stream(st):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=st):
            for _ in range(reps): fn()
    torch.cuda.synchronize()
    for _ in range(3): g.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        a, b = torch.cuda.Event(True), torch.cuda.Event(True)
        a.record(); g.replay(); b.record(); b.synchronize(); ts.append(a.elapsed_time(b) / reps)
    ts.sort(); return ts[len(ts) // 2] * 1e3

torch.manual_seed(0)
dev = "cuda"
rows = []
for (N, K) in [(4096, 4096), (14336, 4096), (4096, 14336), (28672, 8192)]:
    copies = max(2, int(2.0e9 // (N * K // 2)))  # rotate > L2 (50 MB)
    copies = min(copies, 8)
    q = torch.randint(0, 16, (N, K), device=dev, dtype=torch.int32)
    s = (torch.rand(N, K // 128, device=dev) * 0.02 + 0.001).half()
    Wp = pack(q)
    deq = ((q.float() - 8).view(N, K // 128, 128) * s.float()[:, :, None]).view(N, K)
    Ws = [Wp.clone() for _ in range(copies)]
    Ss = [s.clone() for _ in range(copies)]
    Wh = [deq.half() for _ in range(min(copies, 3))]
    for M in (1, 2, 4, 8):
        x = torch.randn(M, K, device=dev).half()
        ref = (x.double() @ deq.double().T)
        for rpw in (2, 4, 12, 14):
            y = torch.full((M, N), float("nan"), device=dev, dtype=torch.half)
            ext.run(Wp, s, x, y, rpw)
            torch.cuda.synchronize()
            err = ((y.double() - ref).norm() / ref.norm()).item()
            i = [0]
            def f():
                i[0] = (i[0] + 1) % copies
                ext.run(Ws[i[0]], Ss[i[0]], x, y, rpw)
            us = bench(f)
            bytes_ = N * K // 2 + N * (K // 128) * 2
            rows.append(dict(N=N, K=K, M=M, kern=("int4 pf R" if rpw >= 10 else "int4 R") + str(rpw % 10), us=us, tbs=bytes_ / us / 1e6, err=err))
        try:
            if M == 1 or True:
                qq = q.to(torch.uint8)
                packed_u8 = (qq[:, 1::2] << 4 | qq[:, 0::2]).contiguous()
                tw = torch._convert_weight_to_int4pack(packed_u8, 8)
                # scales_and_zeros: [K/g, N, 2]. tinygemm dequantizes (q - 8) * s + z, so z = 0
                # here (an earlier run with z = -8 s measured err ~2: timings do not depend on it).
                sz = torch.stack([s.float().T, torch.zeros_like(s.float()).T], dim=-1).to(torch.bfloat16).contiguous()
                xb = x.to(torch.bfloat16)
                yt = torch._weight_int4pack_mm(xb, tw, 128, sz)
                errt = ((yt.double() - ref).norm() / ref.norm()).item()
                tws = [tw.clone() for _ in range(copies)]
                t = [0]
                def h():
                    t[0] = (t[0] + 1) % copies
                    return torch._weight_int4pack_mm(xb, tws[t[0]], 128, sz)
                us = bench(h)
                bytes_ = N * K // 2 + N * (K // 128) * 4
                rows.append(dict(N=N, K=K, M=M, kern="torch int4", us=us, tbs=bytes_ / us / 1e6, err=errt))
        except Exception as e:
            print("torch int4 failed:", repr(e)[:300])
        j = [0]
        def g():
            j[0] = (j[0] + 1) % len(Wh)
            return x @ Wh[j[0]].T
        us = bench(g)
        rows.append(dict(N=N, K=K, M=M, kern="cublas fp16", us=us, tbs=N * K * 2 / us / 1e6, err=0.0))
print(f"{'N':>6} {'K':>6} {'M':>2} {'kernel':>12} {'us':>8} {'TB/s':>6} {'rel err':>9}")
for r in rows:
    print(f"{r['N']:>6} {r['K']:>6} {r['M']:>2} {r['kern']:>12} {r['us']:8.1f} {r['tbs']:6.2f} {r['err']:9.2e}")
json.dump(rows, open(os.path.join(os.environ.get("OUT", "/tmp"), "gemv.json"), "w"))
